"""Sign-ins, failed sign-ins, sign-outs and changes to users, groups and permissions, in the audit log.

Recorded for what happens in a web request (the admin, the API): the actor is the signed-in user, with the IP,
user agent and request id of core.context. Changes made outside one (migrate's role sync, factories in tests,
a shell) are not staff actions and are not recorded here. Passwords never reach the log: a password change is
recorded as `password_changed`, and a failed sign-in records the username only when it names a real user (a
password typed into the username box must not be stored).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group, Permission
from django.contrib.auth.signals import user_logged_in, user_logged_out, user_login_failed
from django.db import models
from django.db.models.signals import m2m_changed, post_save, pre_delete, pre_save
from django.http import HttpRequest

from core.services import audit_record

User = get_user_model()

_web_request: ContextVar[HttpRequest | None] = ContextVar("staff_audit_request", default=None)

USER_FIELDS = ("username", "first_name", "last_name", "email", "is_active", "is_staff", "is_superuser")


@contextmanager
def bound_request(request: HttpRequest) -> Iterator[None]:
    """Marks the code inside as running for `request` (core.staff_security.StaffActivityMiddleware)."""
    token = _web_request.set(request)
    try:
        yield
    finally:
        _web_request.reset(token)


def _acting_user() -> Any:
    """The signed-in user of the current web request, or None outside one (or signed out)."""
    request = _web_request.get()
    user = getattr(request, "user", None) if request is not None else None
    return user if user is not None and user.is_authenticated else None


def _in_web_request() -> bool:
    return _web_request.get() is not None


# --- sign-in and sign-out ------------------------------------------------------------------------------------------


def _signed_in(sender: Any, request: HttpRequest, user: Any, **kwargs: Any) -> None:
    if not _in_web_request():  # the test client's force_login, a script
        return
    device = getattr(user, "otp_device", None)
    audit_record(
        actor=user,
        action="auth.sign_in",
        obj=user,
        after={"second_factor": f"{type(device).__name__}:{device.name}" if device is not None else None},
    )


def _sign_in_failed(sender: Any, credentials: dict[str, Any], request: HttpRequest | None = None, **_: Any) -> None:
    if request is None or not _in_web_request():
        return
    typed = str(credentials.get(User.USERNAME_FIELD) or credentials.get("username") or "")
    user = User._default_manager.filter(**{User.USERNAME_FIELD: typed}).first() if typed else None
    audit_record(
        actor=None,
        actor_repr="anonymous",
        action="auth.sign_in_failed",
        obj=user,
        after={
            "username": user.get_username() if user is not None else None,
            "known_user": user is not None,
            "locked_out": bool(getattr(request, "axes_locked_out", False)),
        },
    )


def _signed_out(sender: Any, request: HttpRequest, user: Any, **kwargs: Any) -> None:
    if user is None or not _in_web_request():
        return
    audit_record(actor=user, action="auth.sign_out", obj=user)


def second_factor_failed(*, user: Any, reason: str) -> None:
    """A right password with a missing or wrong second factor (core.staff_security's sign-in form)."""
    audit_record(actor=None, actor_repr="anonymous", action="auth.second_factor_failed", obj=user,
                 after={"username": user.get_username(), "reason": reason})  # fmt: skip


# --- users and groups ----------------------------------------------------------------------------------------------


def _user_fields(values: dict[str, Any]) -> dict[str, Any]:
    return {name: values[name] for name in USER_FIELDS}


def _user_before(sender: Any, instance: Any, raw: bool = False, update_fields: Any = None, **_: Any) -> None:
    if raw or not _in_web_request() or instance.pk is None or update_fields == frozenset({"last_login"}):
        return
    old = sender._default_manager.filter(pk=instance.pk).values(*USER_FIELDS, "password").first()
    instance._audit_before = old


def _user_saved(sender: Any, instance: Any, created: bool, raw: bool = False, **_: Any) -> None:
    if raw or not _in_web_request():
        return
    now = _user_fields(vars(instance))
    if created:
        audit_record(actor=_acting_user(), action="user.create", obj=instance, after=now)
        return
    old = instance.__dict__.pop("_audit_before", None)
    if old is None:
        return
    changed = [name for name in USER_FIELDS if old[name] != now[name]]
    password_changed = old["password"] != instance.password
    if not changed and not password_changed:
        return
    after: dict[str, Any] = {name: now[name] for name in changed}
    if password_changed:
        after["password_changed"] = True
    audit_record(
        actor=_acting_user(),
        action="user.change",
        obj=instance,
        before={name: old[name] for name in changed},
        after=after,
    )


def _user_deleting(sender: Any, instance: Any, **_: Any) -> None:
    """Before the delete, with the groups it leaves (m2m_changed does not see a delete's cascade)."""
    if _in_web_request():
        before = {**_user_fields(vars(instance)), "groups": sorted(group.name for group in instance.groups.all())}
        audit_record(actor=_acting_user(), action="user.delete", obj=instance, before=before)


def _group_before(sender: Any, instance: Group, raw: bool = False, **_: Any) -> None:
    if not raw and _in_web_request() and instance.pk is not None:
        instance._audit_before = Group.objects.filter(pk=instance.pk).values_list("name", flat=True).first()


def _group_saved(sender: Any, instance: Group, created: bool, raw: bool = False, **_: Any) -> None:
    if raw or not _in_web_request():
        return
    if created:
        audit_record(actor=_acting_user(), action="group.create", obj=instance, after={"name": instance.name})
        return
    old_name = instance.__dict__.pop("_audit_before", None)
    if old_name is not None and old_name != instance.name:
        audit_record(
            actor=_acting_user(), action="group.rename", obj=instance, before={"name": old_name},
            after={"name": instance.name},
        )  # fmt: skip


def _group_deleting(sender: Any, instance: Group, **_: Any) -> None:
    """Before the delete: its memberships and permissions go with it, unseen by m2m_changed."""
    if _in_web_request():
        before = {
            "name": instance.name,
            "users": sorted(user.get_username() for user in instance.user_set.all()),
            "permissions": _labels(Permission, instance.permissions.values_list("pk", flat=True)),
        }
        audit_record(actor=_acting_user(), action="group.delete", obj=instance, before=before)


# --- memberships and permissions -----------------------------------------------------------------------------------


def _label(obj: models.Model) -> str:
    if isinstance(obj, Permission):
        return f"{obj.content_type.app_label}.{obj.codename}"
    if isinstance(obj, Group):
        return obj.name
    return str(obj)


def _labels(model: type[models.Model], pks: Any) -> list[str]:
    rows = model._default_manager.filter(pk__in=pks)
    if model is Permission:
        rows = rows.select_related("content_type")
    return sorted(_label(row) for row in rows)


# (through model, reverse) -> (audit noun, how to list what `instance` holds before a clear)
_RELATIONS = {
    (User.groups.through, False): ("user.groups", lambda obj: obj.groups.all()),
    (User.groups.through, True): ("group.users", lambda obj: obj.user_set.all()),
    (User.user_permissions.through, False): ("user.permissions", lambda obj: obj.user_permissions.all()),
    (User.user_permissions.through, True): ("permission.users", lambda obj: obj.user_set.all()),
    (Group.permissions.through, False): ("group.permissions", lambda obj: obj.permissions.all()),
    (Group.permissions.through, True): ("permission.groups", lambda obj: obj.group_set.all()),
}


def _membership_changed(
    sender: Any, instance: models.Model, action: str, reverse: bool, model: Any, pk_set: Any, **_: Any
) -> None:
    if not _in_web_request() or (sender, reverse) not in _RELATIONS:
        return
    noun, held = _RELATIONS[(sender, reverse)]
    if action == "pre_clear":
        instance._audit_cleared = sorted(_label(obj) for obj in held(instance))  # type: ignore[attr-defined]
        return
    if action == "post_clear":
        cleared = instance.__dict__.pop("_audit_cleared", [])
        if cleared:
            audit_record(actor=_acting_user(), action=f"{noun}.clear", obj=instance, before={"removed": cleared})
        return
    if action in ("post_add", "post_remove") and pk_set:
        verb = "add" if action == "post_add" else "remove"
        key = "added" if verb == "add" else "removed"
        audit_record(actor=_acting_user(), action=f"{noun}.{verb}", obj=instance, after={key: _labels(model, pk_set)})


def connect() -> None:
    """Called once from core.apps.CoreConfig.ready."""
    user_logged_in.connect(_signed_in, dispatch_uid="core.audit.signed_in")
    user_login_failed.connect(_sign_in_failed, dispatch_uid="core.audit.sign_in_failed")
    user_logged_out.connect(_signed_out, dispatch_uid="core.audit.signed_out")
    pre_save.connect(_user_before, sender=User, dispatch_uid="core.audit.user_before")
    post_save.connect(_user_saved, sender=User, dispatch_uid="core.audit.user_saved")
    pre_delete.connect(_user_deleting, sender=User, dispatch_uid="core.audit.user_deleting")
    pre_save.connect(_group_before, sender=Group, dispatch_uid="core.audit.group_before")
    post_save.connect(_group_saved, sender=Group, dispatch_uid="core.audit.group_saved")
    pre_delete.connect(_group_deleting, sender=Group, dispatch_uid="core.audit.group_deleting")
    for through in {through for through, _reverse in _RELATIONS}:
        m2m_changed.connect(_membership_changed, sender=through, dispatch_uid=f"core.audit.m2m.{through.__name__}")
