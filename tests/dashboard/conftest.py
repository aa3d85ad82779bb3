"""Fixtures for the dashboard tests: finance staff by role, and the provider sandbox."""

from __future__ import annotations

import uuid

import pytest
from django.contrib.auth.models import Group, User

from core.roles import roles_sync
from tests.providers.conftest import _sandbox_server, sandbox  # noqa: F401 - the provider sandbox fixtures


@pytest.fixture(autouse=True)
def _own_provider_state(settings):
    """Breakers and availability figures of these tests live under their own Redis keys."""
    settings.PROVIDER_STATE_KEY_PREFIX = f"test:dashboard:{uuid.uuid4().hex}"
    settings.PROVIDER_RETRY_ATTEMPTS = 1


def member(username: str, *roles: str, password: str | None = None) -> User:
    roles_sync()
    user = User.objects.create_user(username, password=password, is_staff=bool(roles))
    user.groups.set(Group.objects.filter(name__in=roles))
    return User.objects.get(pk=user.pk)  # a fresh permission cache


@pytest.fixture
def viewer(db) -> User:
    return member("viewer", "Finance viewer")


@pytest.fixture
def operator(db) -> User:
    return member("operator", "Finance operator")


@pytest.fixture
def approver(db) -> User:
    return member("approver", "Finance approver")


@pytest.fixture
def customer(db) -> User:
    return member("customer")
