"""Fixtures of the protocol tests: the sandbox over real HTTP, fast clients, isolated breakers.

Every call here is one attempt (PROVIDER_RETRY_ATTEMPTS = 1, no delays), so each injected fault hits
exactly the call it names; a hanging provider costs PROVIDER_TIMEOUT_SECONDS, kept small.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from providers.breaker import shared_redis
from providers.sandbox.server import Sandbox
from tests.protocol.harness import relay_clear
from tests.providers.conftest import _sandbox_server, default_payment_config, sandbox  # noqa: F401 - shared fixtures

TIMEOUT_SECONDS = 0.2


@pytest.fixture(scope="module")
def roles_synced_once_per_flush() -> Iterator[None]:
    """A transactional test's flush re-runs every post_migrate receiver once per app; `core.roles.roles_sync`
    needs to run only once, after the last app's permissions exist (seconds per flush otherwise). Module
    scope: swapped back after the module's last flush, so the database ends as a plain flush leaves it."""
    from django.apps import apps
    from django.db.models.signals import post_migrate

    from core.roles import roles_sync

    last = [config for config in apps.get_app_configs() if config.models_module is not None][-1]

    def once(sender: object, **kwargs: object) -> None:
        if sender is last:
            roles_sync(**kwargs)

    post_migrate.disconnect(dispatch_uid="core.roles_sync")
    post_migrate.connect(once, dispatch_uid="tests.protocol.roles_sync_once", weak=False)
    yield
    post_migrate.disconnect(dispatch_uid="tests.protocol.roles_sync_once")
    post_migrate.connect(roles_sync, dispatch_uid="core.roles_sync")


@pytest.fixture
def fast_sandbox(sandbox: Sandbox, settings) -> Iterator[Sandbox]:  # noqa: F811 - the shared fixture, made fast
    """The sandbox with clients that give up quickly, retry nothing, and breakers of their own."""
    prefix = f"test:protocol:{uuid.uuid4().hex}"
    settings.PROVIDER_STATE_KEY_PREFIX = prefix
    settings.PROVIDER_TIMEOUT_SECONDS = TIMEOUT_SECONDS
    settings.PROVIDER_RETRY_ATTEMPTS = 1
    settings.PROVIDER_RETRY_BASE_DELAY_SECONDS = 0
    settings.PROVIDER_RETRY_MAX_DELAY_SECONDS = 0
    settings.PROTOCOL_CLAIM_SECONDS = 30
    relay_clear()
    yield sandbox
    sandbox.clear_faults()
    relay_clear()
    client = shared_redis()
    for key in client.scan_iter(f"{prefix}:*") if client else []:
        client.delete(key)
