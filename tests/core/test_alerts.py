"""Staff alerts: one open alert per key, repeats counted; closing needs the permission and is audited."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import Group, User
from django.test import Client

from core.alerts import alert_close, alert_raise
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
