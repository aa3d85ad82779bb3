"""Staff users for admin tests: a member of finance roles (core.roles) and a test client signed in as them."""

from __future__ import annotations

import uuid

from django.contrib.auth.models import Group, User
from django.test import Client

from core.roles import roles_sync


def member(*roles: str) -> User:
    """A staff user in these finance roles, read back so its permission cache is fresh."""
    roles_sync()
    user = User.objects.create_user(f"staff-{uuid.uuid4().hex[:8]}", is_staff=True)
    user.groups.set(Group.objects.filter(name__in=roles))
    return User.objects.get(pk=user.pk)


def client_for(user: User) -> Client:
    client = Client()
    client.force_login(user)
    return client
