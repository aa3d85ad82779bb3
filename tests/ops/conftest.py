"""Fixtures of the ops tests: Redis keys of each test's own, a Redis nobody listens on, staff users."""

from __future__ import annotations

import socket
import uuid
from collections.abc import Iterator

import pytest
import redis
from django.conf import settings as django_settings
from django.contrib.auth.models import User

from tests.providers.conftest import _sandbox_server, default_payment_config, sandbox  # noqa: F401 - their fixtures


@pytest.fixture(autouse=True)
def own_redis_keys(settings) -> Iterator[None]:
    """Heartbeats, breakers and availability under prefixes of this test's own, deleted afterwards."""
    token, url = uuid.uuid4().hex, django_settings.REDIS_URL  # as set up: a test may point REDIS_URL elsewhere
    settings.HEALTH_KEY_PREFIX = f"test:ops-health:{token}"
    settings.PROVIDER_STATE_KEY_PREFIX = f"test:ops-providers:{token}"
    settings.PROVIDER_BREAKERS = {}
    yield
    if url:
        client = redis.Redis.from_url(url)
        for prefix in (f"test:ops-health:{token}", f"test:ops-providers:{token}"):
            for key in client.scan_iter(match=f"{prefix}:*"):
                client.delete(key)
        client.close()


def dead_port() -> int:
    """A loopback port nobody listens on (bound, then released)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
def redis_down(settings) -> str:
    """REDIS_URL, as every health check and provider state reads it, pointed at a dead port."""
    settings.REDIS_URL = f"redis://127.0.0.1:{dead_port()}/0"
    return settings.REDIS_URL


PASSWORD = "correct horse battery"


def make_staff(username: str, password: str = PASSWORD, **fields: object) -> User:
    return User.objects.create_user(username, password=password, **{"is_staff": True, **fields})


@pytest.fixture
def staff() -> User:
    return make_staff("ops-staff")
