from collections.abc import Iterator
from importlib import import_module

import pytest
from django.apps import apps

from providers.paypal.client import PayPalClient
from providers.sandbox.server import Sandbox


@pytest.fixture(scope="session")
def _sandbox_server() -> Iterator[Sandbox]:
    sandbox = Sandbox()
    sandbox.start()
    yield sandbox
    sandbox.stop()


@pytest.fixture
def sandbox(_sandbox_server: Sandbox, settings) -> Iterator[Sandbox]:
    """The sandbox over real HTTP, fresh for each test; clients point at it."""
    settings.PROVIDER_MODE = "sandbox"
    settings.SANDBOX_URL = _sandbox_server.url
    settings.PROVIDER_TIMEOUT_SECONDS = 1.0
    _sandbox_server.reset()
    PayPalClient().forget_token()  # the sandbox forgot the tokens it issued; so does the shared cache
    yield _sandbox_server
    _sandbox_server.reset()


@pytest.fixture
def default_payment_config() -> None:
    """The seeded payment methods and fee rules (a transactional test's flush removes them)."""
    import_module("providers.migrations.0003_default_methods_and_fees").seed(apps, None)
