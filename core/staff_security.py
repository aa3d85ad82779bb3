"""Staff sign-in: the admin site with a second factor, the idle timeout, and the lockout page.

- StaffAdminSite is `admin.site` (core.apps.StaffAdminConfig). With STAFF_2FA_REQUIRED on it is django-otp's
  OTPAdminSite: only a session verified by a TOTP device passes `has_permission`, so every admin page, action and
  dashboard fragment needs the second factor. With it off it is Django's plain admin site.
- StaffActivityMiddleware binds the request for the audit signals (core.staff_audit) and makes each request
  count as activity for the idle timeout (SESSION_COOKIE_AGE), except the dashboard's background refreshes: an
  unattended dashboard must not keep a session alive.
- django-axes locks out a username from one IP after AXES_FAILURE_LIMIT failed sign-ins; `lockout_response`
  says so on a page (or in the one error body under /api/).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from django import forms
from django.conf import settings
from django.contrib import admin
from django.contrib.admin import AdminSite
from django.db import transaction
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.template.response import TemplateResponse
from django_otp import devices_for_user
from django_otp.admin import OTPAdminAuthenticationForm, OTPAdminSite
from django_otp.plugins.otp_totp.models import TOTPDevice

from core.services import audit_record
from core.staff_audit import bound_request, second_factor_failed

NO_DEVICE_MESSAGE = (
    "Signing in to the admin needs a second factor, and your account has no authenticator device yet. Ask an "
    "administrator to run `manage.py staff_totp {username}` (or to add a TOTP device for you in the admin), add "
    "the key it gives to your authenticator app, then sign in with the 6-digit code it shows."
)


class StaffLoginForm(OTPAdminAuthenticationForm):
    """django-otp's admin sign-in form: username, password and the 6-digit code. A user with one device need not
    pick it; a user with none is told how to get one; a wrong or missing code is audited."""

    otp_token = forms.CharField(
        required=False, label="Code", widget=forms.TextInput(attrs={"autocomplete": "one-time-code"})
    )

    def clean_otp(self, user: Any) -> None:
        if user is None:
            return
        if not any(devices_for_user(user, confirmed=True)):
            second_factor_failed(user=user, reason="no_device")
            raise forms.ValidationError(NO_DEVICE_MESSAGE.format(username=user.get_username()), code="no_device")
        try:
            super().clean_otp(user)
        except forms.ValidationError as error:
            second_factor_failed(user=user, reason=error.code or "invalid_token")
            raise

    def _chosen_device(self, user: Any) -> Any:
        device = super()._chosen_device(user)
        if device is None and not self.cleaned_data.get("otp_device"):
            devices = list(devices_for_user(user, confirmed=True, for_verify=True))
            if len(devices) == 1:  # nothing to choose; with several the user picks one
                return devices[0]
        return device


class StaffAdminSite(OTPAdminSite):
    def __init__(self, name: str = "admin") -> None:
        super().__init__(name)

    @property  # type: ignore[override]
    def login_form(self) -> type[forms.Form] | None:
        return StaffLoginForm if settings.STAFF_2FA_REQUIRED else None

    @property  # type: ignore[override]
    def login_template(self) -> str | None:
        return OTPAdminSite.login_template if settings.STAFF_2FA_REQUIRED else None

    def has_permission(self, request: HttpRequest) -> bool:
        if settings.STAFF_2FA_REQUIRED:
            return super().has_permission(request)  # active staff, verified by a device
        return AdminSite.has_permission(self, request)


def is_background_refresh(request: HttpRequest) -> bool:
    """The dashboard's htmx polls (GETs it sends every few seconds by itself), not a person's action."""
    return request.method == "GET" and request.headers.get("HX-Request") == "true"


class StaffActivityMiddleware:
    """After AuthenticationMiddleware and OTPMiddleware. Replaces SESSION_SAVE_EVERY_REQUEST: the session's expiry
    moves SESSION_COOKIE_AGE ahead on every request but a background refresh."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        with bound_request(request):
            response = self.get_response(request)
        session = getattr(request, "session", None)
        if session is not None and not session.is_empty() and not is_background_refresh(request):
            session.modified = True
        return response


def client_ip(request: HttpRequest) -> str | None:
    """The address axes locks out: REMOTE_ADDR, as in the audit log (core.middleware). Behind a proxy, have the
    server set it (gunicorn --forwarded-allow-ips); a header a client can write is never trusted here."""
    return request.META.get("REMOTE_ADDR") or None


def lockout_response(
    request: HttpRequest, original_response: HttpResponse | None = None, credentials: dict[str, Any] | None = None
) -> HttpResponse:
    """AXES_LOCKOUT_CALLABLE: 429 with Retry-After, as a page (or the one error body under /api/)."""
    minutes = max(1, int(settings.AXES_COOLOFF_TIME.total_seconds() // 60))
    retry_after = str(int(settings.AXES_COOLOFF_TIME.total_seconds()))
    if request.path.startswith(("/api/", "/webhooks/")):
        response: HttpResponse = JsonResponse(
            {
                "error": {
                    "code": "locked_out",
                    "message": f"too many failed sign-ins for this username from this address; locked {minutes} min",
                    "user_message": "Too many failed sign-ins: signing in with this username from here is "
                    "blocked for a while.",
                    "action_required": f"Wait {minutes} minutes and try again with the right password.",
                    "retryable": True,
                    "details": {"retry_after_seconds": int(retry_after)},
                }
            },
            status=429,
        )
    else:
        context = {
            **admin.site.each_context(request),
            "title": "Signing in is blocked for a while",
            "minutes": minutes,
            "username": str((credentials or {}).get("username") or request.POST.get("username", ""))[:150],
        }
        response = TemplateResponse(request, "admin/locked_out.html", context, status=429)
        response.render()
    response["Retry-After"] = retry_after
    return response


@transaction.atomic
def totp_device_issue(*, user: Any, name: str, replace: bool = False) -> TOTPDevice:
    """A confirmed TOTP device for `user` (audited). Refuses when the user has one and `replace` is not given."""
    existing = TOTPDevice.objects.devices_for_user(user, confirmed=None)
    if existing.exists() and not replace:
        raise ValueError(
            f"{user.get_username()!r} already has a TOTP device; pass --replace to replace it (e.g. a lost phone)."
        )
    removed = sorted(existing.values_list("name", flat=True))
    existing.delete()
    device = TOTPDevice.objects.create(user=user, name=name, confirmed=True)
    audit_record(actor=None, action="otp.device_issue", obj=user, after={"device": name, "replaced": removed})
    return device
