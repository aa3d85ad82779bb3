from tests.providers.conftest import _sandbox_server, sandbox  # noqa: F401 - the provider sandbox fixtures
