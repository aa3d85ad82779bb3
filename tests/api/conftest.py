from tests.escrow.conftest import _stripe_fee_rules  # noqa: F401 - Stripe's fee rules seeded for every database test
from tests.providers.conftest import _sandbox_server, default_payment_config, sandbox  # noqa: F401 - shared fixtures
