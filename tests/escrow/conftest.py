import pytest

from tests.providers.conftest import _sandbox_server, default_payment_config, sandbox  # noqa: F401 - shared fixtures


@pytest.fixture(autouse=True)
def _stripe_fee_rules(request: pytest.FixtureRequest) -> None:
    """Every Stripe capture here also posts Stripe's fee by our fee rules (USD 2.9% + 30, PHP 3.5% + 1,500).
    The rules are seeded by a migration, and a transactional test's flush deletes them, so without this the
    fee would depend on test order. Seeding is idempotent (get_or_create), so every database test re-seeds."""
    uses_db = {"db", "transactional_db"} & set(request.fixturenames)
    if request.node.get_closest_marker("django_db") is None and not uses_db:
        return  # no database, no captures
    request.getfixturevalue("db")  # already set up by the marker or requested; transactional if asked
    request.getfixturevalue("default_payment_config")
