"""Staff sign-in: the second factor (TOTP, django-otp) with STAFF_2FA_REQUIRED on, the lockout after failed
sign-ins (django-axes) per username and address, and the session's idle timeout."""

from __future__ import annotations

import time
from datetime import timedelta
from io import StringIO
from typing import Any

import pytest
from axes.models import AccessAttempt
from django.contrib.sessions.models import Session
from django.core.management import CommandError, call_command
from django.test import Client
from django.utils import timezone
from django_otp.oath import TOTP
from django_otp.plugins.otp_totp.models import TOTPDevice

from core.models import AuditLog
from tests.ops.conftest import PASSWORD, make_staff

pytestmark = pytest.mark.django_db

LOGIN = "/admin/login/?next=/admin/"


def sign_in(client: Client, username: str, password: str = PASSWORD, **extra: str) -> Any:
    return client.post(LOGIN, {"username": username, "password": password, "next": "/admin/", **extra})


def code_now(device: TOTPDevice, *, offset_steps: int = 0) -> str:
    totp = TOTP(device.bin_key, device.step, device.t0, device.digits, device.drift)
    totp.time = time.time() + offset_steps * device.step
    return f"{totp.token():0{device.digits}d}"


def reaches_admin(client: Client) -> bool:
    response = client.get("/admin/")
    assert response.status_code in (200, 302), response.status_code
    return response.status_code == 200


# --- the second factor -------------------------------------------------------------------------------------------


@pytest.fixture
def two_factor(settings) -> None:
    settings.STAFF_2FA_REQUIRED = True


@pytest.fixture
def device_holder() -> tuple[Any, TOTPDevice]:
    """A staff user given a device the way an administrator does it: `manage.py staff_totp <username>`."""
    user = make_staff("otp-staff")
    out = StringIO()
    call_command("staff_totp", "otp-staff", stdout=out)
    device = TOTPDevice.objects.get(user=user)
    assert device.confirmed and device.config_url in out.getvalue()
    return user, device


def test_with_2fa_on_a_password_alone_does_not_reach_the_admin(two_factor, device_holder):
    client = Client()

    page = client.get(LOGIN)
    response = sign_in(client, "otp-staff")

    assert 'name="otp_token"' in page.content.decode()
    assert response.status_code == 200  # the form again, with the error
    assert "Please enter your OTP token." in response.content.decode()
    assert not reaches_admin(client)
    row = AuditLog.objects.get(action="auth.second_factor_failed")
    assert (row.actor_repr, row.after) == ("anonymous", {"username": "otp-staff", "reason": "token_required"})


def test_with_2fa_on_a_wrong_code_does_not_reach_the_admin(two_factor, device_holder):
    _, device = device_holder
    client = Client()
    wrong = code_now(device, offset_steps=10)  # five minutes off: outside the tolerated drift

    response = sign_in(client, "otp-staff", otp_token=wrong)

    assert response.status_code == 200
    assert not reaches_admin(client)
    assert AuditLog.objects.get(action="auth.second_factor_failed").after["reason"] == "invalid_token"


def test_with_2fa_on_a_valid_code_reaches_the_admin(two_factor, device_holder):
    user, device = device_holder
    client = Client()

    response = sign_in(client, "otp-staff", otp_token=code_now(device))

    assert (response.status_code, response["Location"]) == (302, "/admin/")
    assert reaches_admin(client)
    row = AuditLog.objects.get(action="auth.sign_in")
    assert (row.actor_id, row.after) == (user.pk, {"second_factor": "TOTPDevice:authenticator"})


def test_with_2fa_on_a_session_signed_in_by_password_only_is_sent_to_sign_in(two_factor, device_holder):
    """Every admin page, the dashboard's fragments and the provider page need a verified session."""
    user, _ = device_holder
    user.is_superuser = True
    user.save()
    client = Client()
    client.force_login(user)  # what a password-only sign-in would give

    assert client.get("/admin/").status_code == 302
    assert client.get("/admin/core/auditlog/").status_code == 302
    assert client.get("/admin/providers/health/").status_code == 302
    fragment = client.get("/admin/dashboard/alerts/", HTTP_HX_REQUEST="true")
    assert (fragment.status_code, fragment["HX-Redirect"].startswith("/admin/login/")) == (204, True)


def test_with_2fa_on_a_user_without_a_device_is_told_how_to_get_one(two_factor):
    make_staff("no-device")

    response = sign_in(Client(), "no-device", otp_token="123456")

    assert "manage.py staff_totp no-device" in response.content.decode()
    assert AuditLog.objects.get(action="auth.second_factor_failed").after["reason"] == "no_device"


def test_with_2fa_off_a_password_reaches_the_admin():
    make_staff("plain-staff")
    client = Client()
    assert sign_in(client, "plain-staff").status_code == 302
    assert reaches_admin(client)


def test_staff_totp_refuses_a_second_device_unless_replacing(device_holder):
    user, _ = device_holder
    with pytest.raises(CommandError, match="already has a TOTP device"):
        call_command("staff_totp", "otp-staff", stdout=StringIO())

    call_command("staff_totp", "otp-staff", "--replace", "--name", "new phone", stdout=StringIO())

    assert list(TOTPDevice.objects.filter(user=user).values_list("name", flat=True)) == ["new phone"]
    assert AuditLog.objects.filter(action="otp.device_issue").count() == 2
    with pytest.raises(CommandError, match="is not staff"):
        make_staff("customer", is_staff=False)
        call_command("staff_totp", "customer", stdout=StringIO())


# --- the lockout -------------------------------------------------------------------------------------------------


def test_failed_sign_ins_lock_that_username_from_that_address_only(settings):
    settings.AXES_FAILURE_LIMIT = 3
    make_staff("alice")
    make_staff("bob")
    attacker = Client(REMOTE_ADDR="198.51.100.1")

    answers = [sign_in(attacker, "alice", "guess").status_code for _ in range(3)]
    locked = sign_in(attacker, "alice")  # even the right password, now

    assert answers == [200, 200, 429]
    assert locked.status_code == 429
    assert locked["Retry-After"] == str(settings.AXES_COOLOFF_TIME.seconds)
    assert "Too many failed sign-ins" in locked.content.decode()
    assert AccessAttempt.objects.get(username="alice").failures_since_start >= 3
    # another staff user from the same address, and alice from elsewhere, still sign in
    assert sign_in(attacker, "bob").status_code == 302
    elsewhere = Client(REMOTE_ADDR="198.51.100.2")
    assert sign_in(elsewhere, "alice").status_code == 302
    assert reaches_admin(elsewhere)
    failed = AuditLog.objects.filter(action="auth.sign_in_failed").order_by("pk")
    assert [row.after["locked_out"] for row in failed] == [False, False, True, True]
    assert {row.ip for row in failed} == {"198.51.100.1"}


def test_the_lockout_lifts_after_the_cool_off(settings):
    settings.AXES_FAILURE_LIMIT = 2
    make_staff("carol")
    client = Client(REMOTE_ADDR="198.51.100.3")
    for _ in range(2):
        sign_in(client, "carol", "guess")
    assert sign_in(client, "carol").status_code == 429

    AccessAttempt.objects.update(attempt_time=timezone.now() - settings.AXES_COOLOFF_TIME - timedelta(seconds=1))

    assert sign_in(client, "carol").status_code == 302


# --- the idle timeout --------------------------------------------------------------------------------------------


@pytest.fixture
def signed_in() -> Client:
    make_staff("idle-staff", is_superuser=True)
    client = Client()
    assert sign_in(client, "idle-staff").status_code == 302
    return client


def session_row(client: Client) -> Session:
    return Session.objects.get(session_key=client.cookies["sessionid"].value)


def expires_in(client: Client) -> float:
    return (session_row(client).expire_date - timezone.now()).total_seconds()


def test_a_session_idle_for_longer_than_the_timeout_is_signed_out(signed_in, settings):
    assert settings.SESSION_COOKIE_AGE == settings.STAFF_SESSION_IDLE_MINUTES * 60 == 30 * 60
    Session.objects.filter(pk=session_row(signed_in).pk).update(expire_date=timezone.now() - timedelta(seconds=1))

    response = signed_in.get("/admin/")

    assert (response.status_code, response["Location"]) == (302, "/admin/login/?next=/admin/")


def test_each_request_of_a_person_moves_the_timeout_ahead(signed_in):
    Session.objects.filter(pk=session_row(signed_in).pk).update(expire_date=timezone.now() + timedelta(seconds=60))

    assert reaches_admin(signed_in)

    assert 29 * 60 < expires_in(signed_in) <= 30 * 60


def test_the_dashboards_own_refreshes_do_not_keep_a_session_alive(signed_in):
    Session.objects.filter(pk=session_row(signed_in).pk).update(expire_date=timezone.now() + timedelta(seconds=60))

    fragment = signed_in.get("/admin/dashboard/alerts/", HTTP_HX_REQUEST="true")

    assert fragment.status_code == 200
    assert expires_in(signed_in) <= 60
