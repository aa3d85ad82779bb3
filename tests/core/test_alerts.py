"""Staff alerts: one open alert per key, repeats counted, emailed once after commit; closing needs the permission
and is audited; a source resolves its own alert as the system."""

from __future__ import annotations

from smtplib import SMTPServerDisconnected

import pytest
from django.contrib.auth.models import Group, User
from django.core.mail.backends.base import BaseEmailBackend
from django.db import transaction
from django.test import Client

from core.alerts import alert_close, alert_raise, alert_resolve
from core.errors import InvalidStateTransition, PermissionDenied
from core.models import Alert, AuditLog
from core.roles import roles_sync

pytestmark = pytest.mark.django_db


def staff(name: str, *roles: str) -> User:
    roles_sync()
    user = User.objects.create_user(name, is_staff=True)
    user.groups.set(Group.objects.filter(name__in=roles))
    return User.objects.get(pk=user.pk)


def test_raising_the_same_key_again_counts_a_repeat_on_the_open_alert():
    first = alert_raise(key="escrow:timeouts", title="Timeout run stopped", detail="50 deals", action_required="Look")
    again = alert_raise(key="escrow:timeouts", title="Timeout run stopped", detail="51 deals")
    assert again.pk == first.pk
    assert (again.occurrences, again.detail, again.status) == (2, "51 deals", Alert.Status.OPEN)
    assert Alert.objects.count() == 1


def test_after_resolving_a_new_raise_opens_a_new_alert():
    approver = staff("approver", "Finance approver")
    first = alert_raise(key="k", title="t")
    alert_close(alert_pk=first.pk, actor=approver, status=Alert.Status.RESOLVED)
    second = alert_raise(key="k", title="t")
    assert second.pk != first.pk and second.occurrences == 1
    assert AuditLog.objects.filter(action="core.alert.resolved", object_id=str(first.pk)).count() == 1


def test_closing_needs_the_permission_and_a_resolved_alert_stays_resolved():
    viewer = staff("viewer", "Finance viewer")
    approver = staff("approver", "Finance approver")
    alert = alert_raise(key="k", title="t")
    with pytest.raises(PermissionDenied):
        alert_close(alert_pk=alert.pk, actor=viewer, status=Alert.Status.ACKNOWLEDGED)
    alert_close(alert_pk=alert.pk, actor=approver, status=Alert.Status.ACKNOWLEDGED)
    alert_close(alert_pk=alert.pk, actor=approver, status=Alert.Status.RESOLVED)
    with pytest.raises(InvalidStateTransition):
        alert_close(alert_pk=alert.pk, actor=approver, status=Alert.Status.ACKNOWLEDGED)
    assert Alert.objects.get(pk=alert.pk).acknowledged_by == approver


def test_the_admin_action_resolves_and_reports_refusals():
    approver = staff("approver", "Finance approver")
    open_alert = alert_raise(key="a", title="Open one")
    done = alert_raise(key="b", title="Done one")
    alert_close(alert_pk=done.pk, actor=approver, status=Alert.Status.RESOLVED)
    client = Client()
    client.force_login(approver)
    response = client.post(
        "/admin/core/alert/",
        {"action": "resolve", "_selected_action": [open_alert.pk, done.pk]},
        follow=True,
    )
    text = response.content.decode()
    assert "Open one: resolved." in text
    assert "Done one: This alert is already resolved." in text
    assert Alert.objects.get(pk=open_alert.pk).status == Alert.Status.RESOLVED


# --- email: once per new alert, after commit, never breaking the caller -------------------------------------


class BrokenMailServer(BaseEmailBackend):
    def send_messages(self, email_messages):
        raise SMTPServerDisconnected("Connection unexpectedly closed")


@pytest.fixture
def finance_team(settings):
    """Who an alert reaches: operators and approvers with an address, and ALERT_EMAILS; nobody else."""
    settings.ALERT_EMAILS = ["oncall@example.com", " "]
    roles_sync()
    for name, role, email, active in [
        ("operator", "Finance operator", "operator@example.com", True),
        ("approver", "Finance approver", "approver@example.com", True),
        ("viewer", "Finance viewer", "viewer@example.com", True),
        ("left", "Finance operator", "left@example.com", False),
        ("no-address", "Finance approver", "", True),
    ]:
        user = User.objects.create_user(name, email=email, is_staff=True, is_active=active)
        user.groups.set(Group.objects.filter(name=role))
    return ["approver@example.com", "oncall@example.com", "operator@example.com"]


def test_a_new_alert_is_emailed_once_after_commit_to_the_finance_team(
    finance_team, django_capture_on_commit_callbacks, mailoutbox
):
    with django_capture_on_commit_callbacks(execute=True):
        alert = alert_raise(
            key="circuit:stripe", title="Stripe is failing", detail="5 timeouts", action_required="Check Stripe",
            severity=Alert.Severity.CRITICAL,
        )  # fmt: skip
        alert_raise(key="circuit:stripe", title="Stripe is failing", detail="6 timeouts")
        assert mailoutbox == []  # not before the commit
    (mail,) = mailoutbox
    assert sorted(mail.to) == finance_team
    assert mail.subject == "[Back office] CRITICAL: Stripe is failing"
    assert "What to do: Check Stripe" in mail.body and f"/admin/core/alert/{alert.pk}/change/" in mail.body
    assert "Alert key: circuit:stripe" in mail.body


def test_a_rolled_back_raise_sends_nothing(finance_team, django_capture_on_commit_callbacks, mailoutbox):
    with django_capture_on_commit_callbacks(execute=True), pytest.raises(RuntimeError):
        with transaction.atomic():
            alert_raise(key="payout:batch:1:denied", title="Batch refused", severity=Alert.Severity.CRITICAL)
            raise RuntimeError("the money path failed after raising")
    assert mailoutbox == [] and not Alert.objects.exists()


def test_a_failing_mail_server_never_breaks_the_caller(
    finance_team, django_capture_on_commit_callbacks, settings, capsys
):
    settings.EMAIL_BACKEND = f"{__name__}.BrokenMailServer"
    with django_capture_on_commit_callbacks(execute=True):
        alert = alert_raise(key="lock:payout-cycle:1", title="Stale lock")
    assert Alert.objects.get(pk=alert.pk).status == Alert.Status.OPEN  # the alert stays
    assert "alert.email_failed" in capsys.readouterr().err  # and the failure is logged (logs: stderr)


def test_an_acknowledged_alert_counts_repeats_without_a_new_alert_or_email(
    finance_team, django_capture_on_commit_callbacks, mailoutbox
):
    approver = User.objects.get(username="approver")
    with django_capture_on_commit_callbacks(execute=True):
        alert = alert_raise(key="escrow:timeouts:breaker", title="Run stopped", severity=Alert.Severity.CRITICAL)
        alert_close(alert_pk=alert.pk, actor=approver, status=Alert.Status.ACKNOWLEDGED)
        again = alert_raise(key="escrow:timeouts:breaker", title="Run stopped again", detail="next run")
    assert again.pk == alert.pk and (again.status, again.occurrences) == (Alert.Status.ACKNOWLEDGED, 2)
    assert again.title == "Run stopped again" and len(mailoutbox) == 1


def test_a_reopened_critical_alert_is_emailed_again_a_flapping_warning_is_not(
    finance_team, django_capture_on_commit_callbacks, mailoutbox, settings
):
    settings.ALERT_WARNING_REOPEN_QUIET_MINUTES = 60
    with django_capture_on_commit_callbacks(execute=True):
        for key, severity in [("movement:k", Alert.Severity.CRITICAL), ("circuit:maya", Alert.Severity.WARNING)]:
            alert_raise(key=key, title=key, severity=severity)
            assert alert_resolve(key=key, reason="cleared") == 1
            alert_raise(key=key, title=key, severity=severity)
    assert sorted(mail.subject for mail in mailoutbox) == [
        "[Back office] CRITICAL: movement:k",
        "[Back office] CRITICAL: movement:k",
        "[Back office] WARNING: circuit:maya",
    ]
    assert Alert.objects.filter(key="circuit:maya").count() == 2  # still a new alert to see, only not emailed


def test_the_source_resolves_its_alert_as_the_system_with_an_audit_row():
    alert = alert_raise(key="lock:escrow-deal:4", title="Stale lock")
    assert alert_resolve(key="lock:escrow-deal:4", reason="released") == 1
    assert alert_resolve(key="lock:escrow-deal:4") == 0  # nothing active any more
    alert.refresh_from_db()
    audit = AuditLog.objects.get(action="core.alert.resolved", object_id=str(alert.pk))
    assert alert.status == Alert.Status.RESOLVED and (audit.actor_repr, audit.after["reason"]) == ("system", "released")
