from tests.payouts.cycles import cycle, operator  # noqa: F401 - the payout cycle fixtures
from tests.providers.conftest import _sandbox_server, sandbox  # noqa: F401 - the provider sandbox fixtures
