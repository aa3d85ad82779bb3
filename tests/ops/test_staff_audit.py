"""The audit log of staff sign-ins and of changes to users, groups and permissions made through the admin."""

from __future__ import annotations

from typing import Any

import pytest
from django.contrib.auth.models import Group, Permission, User
from django.test import Client

from core.models import AuditLog
from tests.ops.conftest import PASSWORD, make_staff

pytestmark = pytest.mark.django_db


def rows(action: str) -> list[AuditLog]:
    return list(AuditLog.objects.filter(action=action).order_by("pk"))


@pytest.fixture
def admin_client() -> Client:
    make_staff("root", is_superuser=True)
    client = Client(REMOTE_ADDR="192.0.2.10", HTTP_USER_AGENT="ops-test browser")
    response = client.post("/admin/login/", {"username": "root", "password": PASSWORD, "next": "/admin/"})
    assert response.status_code == 302
    return client


def user_form(user: User, **changes: Any) -> dict[str, Any]:
    """The admin's user change form as the page would post it back, with `changes`."""
    data: dict[str, Any] = {
        "username": user.username, "first_name": user.first_name, "last_name": user.last_name, "email": user.email,
        "is_active": "on" if user.is_active else "", "is_staff": "on" if user.is_staff else "",
        "groups": [g.pk for g in user.groups.all()], "user_permissions": [p.pk for p in user.user_permissions.all()],
        "date_joined_0": user.date_joined.strftime("%Y-%m-%d"), "date_joined_1": user.date_joined.strftime("%H:%M:%S"),
        "last_login_0": "", "last_login_1": "",
    }  # fmt: skip
    data.update(changes)
    return {name: value for name, value in data.items() if value != ""}


def test_a_sign_in_is_recorded_with_address_agent_and_request_id(admin_client):
    (row,) = rows("auth.sign_in")
    root = User.objects.get(username="root")
    assert (row.actor_id, row.actor_repr, row.object_id) == (root.pk, "root", str(root.pk))
    assert (row.ip, row.user_agent) == ("192.0.2.10", "ops-test browser")
    assert len(row.request_id) == 32


def test_failed_sign_ins_are_recorded_without_storing_what_was_typed_as_a_username():
    make_staff("dave")
    client = Client(REMOTE_ADDR="192.0.2.11")
    client.post("/admin/login/", {"username": "dave", "password": "wrong"})
    client.post("/admin/login/", {"username": "Tr0ub4dor&3", "password": "wrong"})  # a password in the wrong box

    known, unknown = rows("auth.sign_in_failed")
    assert (known.actor_repr, known.ip, known.after) == (
        "anonymous", "192.0.2.11", {"username": "dave", "known_user": True, "locked_out": False}
    )  # fmt: skip
    assert unknown.after == {"username": None, "known_user": False, "locked_out": False}
    assert "Tr0ub4dor" not in str(unknown.after) + unknown.object_repr


def test_a_sign_out_is_recorded(admin_client):
    admin_client.post("/admin/logout/")
    assert [row.actor_repr for row in rows("auth.sign_out")] == ["root"]


def test_creating_and_changing_a_user_and_its_groups_and_permissions_is_recorded(admin_client):
    viewers = Group.objects.create(name="Ops viewers")  # outside a request: not a staff action, not recorded
    perm = Permission.objects.get(codename="view_auditlog")
    assert rows("group.create") == []

    new_user = {"username": "erin", "password1": "s3cret-Passw0rd!", "password2": "s3cret-Passw0rd!"}
    added = admin_client.post("/admin/auth/user/add/", {**new_user, "usable_password": "true"})
    assert added.status_code == 302, added.content[:2000]
    erin = User.objects.get(username="erin")
    changed = admin_client.post(f"/admin/auth/user/{erin.pk}/change/", user_form(
        erin, email="erin@example.com", is_staff="on", groups=[viewers.pk], user_permissions=[perm.pk]))  # fmt: skip
    assert changed.status_code == 302, changed.content[:2000]

    (create,) = rows("user.create")
    (change,) = rows("user.change")
    assert (create.actor_repr, create.after["username"], create.after["is_staff"]) == ("root", "erin", False)
    assert change.before == {"email": "", "is_staff": False}
    assert change.after == {"email": "erin@example.com", "is_staff": True}
    assert [(r.object_id, r.after) for r in rows("user.groups.add")] == [(str(erin.pk), {"added": ["Ops viewers"]})]
    assert [r.after for r in rows("user.permissions.add")] == [{"added": ["core.view_auditlog"]}]

    erin.refresh_from_db()
    admin_client.post(f"/admin/auth/user/{erin.pk}/change/", user_form(erin, groups=[], user_permissions=[]))
    assert [r.after for r in rows("user.groups.remove")] == [{"removed": ["Ops viewers"]}]
    assert [r.after for r in rows("user.permissions.remove")] == [{"removed": ["core.view_auditlog"]}]

    erin.groups.add(viewers)
    assert admin_client.post(f"/admin/auth/user/{erin.pk}/delete/", {"post": "yes"}).status_code == 302
    (delete,) = rows("user.delete")
    assert (delete.object_id, delete.before["email"], delete.before["groups"]) == (
        str(erin.pk), "erin@example.com", ["Ops viewers"]
    )  # fmt: skip


def test_a_password_change_is_recorded_without_the_password(admin_client):
    erin = make_staff("erin")
    response = admin_client.post(f"/admin/auth/user/{erin.pk}/password/", {
        "password1": "An0ther-s3cret!", "password2": "An0ther-s3cret!", "usable_password": "true"})  # fmt: skip
    assert response.status_code == 302

    (row,) = rows("user.change")
    assert (row.before, row.after) == ({}, {"password_changed": True})
    assert "pbkdf2" not in str(row.after) and "md5" not in str(row.after)


def test_groups_their_permissions_and_deletions_are_recorded(admin_client):
    perms = list(Permission.objects.filter(codename__in=["view_alert", "view_auditlog"]).order_by("codename"))
    response = admin_client.post("/admin/auth/group/add/", {"name": "Auditors", "permissions": [p.pk for p in perms]})
    assert response.status_code == 302
    group = Group.objects.get(name="Auditors")

    admin_client.post(f"/admin/auth/group/{group.pk}/change/", {"name": "Audit team", "permissions": [perms[0].pk]})
    admin_client.post(f"/admin/auth/group/{group.pk}/delete/", {"post": "yes"})
    erin = make_staff("erin")
    erin.groups.add(Group.objects.create(name="Leavers"))
    admin_client.post(f"/admin/auth/group/{erin.groups.get().pk}/delete/", {"post": "yes"})  # members cleared first

    assert [r.after for r in rows("group.create")] == [{"name": "Auditors"}]
    assert [r.after for r in rows("group.permissions.add")] == [{"added": ["core.view_alert", "core.view_auditlog"]}]
    assert [(r.before, r.after) for r in rows("group.rename")] == [({"name": "Auditors"}, {"name": "Audit team"})]
    assert [r.after for r in rows("group.permissions.remove")] == [{"removed": ["core.view_auditlog"]}]
    assert [r.before for r in rows("group.delete")] == [
        {"name": "Audit team", "users": [], "permissions": ["core.view_alert"]},
        {"name": "Leavers", "users": ["erin"], "permissions": []},
    ]
    assert {r.actor_repr for r in AuditLog.objects.filter(action__startswith="group.")} == {"root"}
