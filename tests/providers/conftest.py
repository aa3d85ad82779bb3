from collections.abc import Iterator

import pytest

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
    yield _sandbox_server
    _sandbox_server.reset()
