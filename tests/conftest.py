import pytest
from django.core.servers.basehttp import ThreadedWSGIServer

from ledger.services import forget_account_facts

# Django's live test server listens with socketserver's backlog of 5; concurrency
# tests open bursts of 50 connections.
ThreadedWSGIServer.request_queue_size = 128


@pytest.fixture(autouse=True)
def _forget_remembered_account_facts():
    """Each test starts from an empty database (rolled back or truncated), so facts a
    process remembered from an earlier test describe accounts that no longer exist."""
    forget_account_facts()
    yield
    forget_account_facts()
