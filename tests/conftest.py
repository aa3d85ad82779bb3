import pytest

from ledger.services import forget_account_facts


@pytest.fixture(autouse=True)
def _forget_remembered_account_facts():
    """Each test starts from an empty database (rolled back or truncated), so facts a
    process remembered from an earlier test describe accounts that no longer exist."""
    forget_account_facts()
    yield
    forget_account_facts()
