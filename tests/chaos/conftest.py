"""Chaos tests: every module here is marked `chaos` (excluded from `make test`; `make test-chaos` runs them) and
records what it tried for docs/chaos-results.md (tests.chaos.results)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from ops.stack import Stack
from tests.chaos import results, world
from tests.protocol.conftest import fast_sandbox, roles_synced_once_per_flush  # noqa: F401 - shared fixtures
from tests.providers.conftest import _sandbox_server, default_payment_config, sandbox  # noqa: F401 - shared fixtures


@pytest.fixture(scope="session")
def django_db_modify_db_settings() -> None:
    """The test database is named after the configured one plus `_test` (make test-chaos: backoffice_chaos_test),
    so a chaos run never meets the databases of `make test`."""
    from django.conf import settings

    database = settings.DATABASES["default"]
    database.setdefault("TEST", {})["NAME"] = f"{database['NAME']}_test"


@pytest.fixture(scope="session", autouse=True)
def _chaos_results() -> Iterator[None]:
    """docs/chaos-results.md is written at the end of the run when CHAOS_RESULTS names it (make test-chaos)."""
    yield
    results.write_if_asked()


@pytest.fixture(scope="session")
def chaos_stack(django_db_setup: None) -> Iterator[Stack]:
    """The real stack (sandbox, gunicorn, worker1, worker2, beat) on backoffice_chaos_stack and Redis db 13."""
    import redis

    redis_url = "redis://127.0.0.1:6379/13"
    redis.Redis.from_url(redis_url).flushdb()  # no task of an earlier run is delivered to this one
    with world.stack_for("stack", redis_url) as stack:
        yield stack


@pytest.fixture(scope="session")
def tasks(chaos_stack: Stack) -> Iterator[world.Tasks]:
    sender = world.Tasks(chaos_stack.redis_url)
    yield sender
    sender.close()


@pytest.fixture
def on_stack(chaos_stack: Stack, settings, django_db_blocker) -> Iterator[Stack]:
    """The test process on the stack's database and sandbox; faults and pauses cleared after."""
    with world.on_stack_database(chaos_stack, settings, django_db_blocker):
        world.breakers_reset()
        yield chaos_stack
        world.pause_disarm()
        world.sandbox_clear(chaos_stack)
        world.stripe_webhooks(chaos_stack)
