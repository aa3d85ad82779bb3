"""Alerts for staff: raised by jobs that stop and wait for a person, shown in the admin."""

from __future__ import annotations

import structlog
from django.contrib.auth.base_user import AbstractBaseUser
from django.db import IntegrityError, transaction
from django.db.models import F
from django.utils import timezone

from core.errors import InvalidStateTransition
from core.models import Alert
from core.permissions import require_permission
from core.services import audit_record

log = structlog.get_logger(__name__)


def alert_raise(
    *, key: str, title: str, detail: str = "", action_required: str = "", severity: str = Alert.Severity.WARNING
) -> Alert:
    """Open an alert, or count one more occurrence of the open alert with this key."""
    log.warning("alert.raised", key=key, title=title, severity=severity)
    now = timezone.now()
    for _ in range(2):  # a concurrent raise may create the open row between our update and insert
        repeated = Alert.objects.filter(key=key, status=Alert.Status.OPEN).update(
            occurrences=F("occurrences") + 1, last_raised_at=now, detail=detail, updated_at=now
        )
        if repeated:
            return Alert.objects.get(key=key, status=Alert.Status.OPEN)
        try:
            with transaction.atomic():
                return Alert.objects.create(
                    key=key,
                    title=title[:255],
                    detail=detail,
                    action_required=action_required[:500],
                    severity=severity,
                    last_raised_at=now,
                )
        except IntegrityError:
            continue
    return Alert.objects.get(key=key, status=Alert.Status.OPEN)


def alert_close(*, alert_pk: int, actor: AbstractBaseUser, status: str) -> Alert:
    """Staff: acknowledge (seen, being handled) or resolve an alert."""
    require_permission(actor, "core.acknowledge_alert")
    with transaction.atomic():
        alert = Alert.objects.select_for_update().get(pk=alert_pk)
        if alert.status == Alert.Status.RESOLVED or status not in (Alert.Status.ACKNOWLEDGED, Alert.Status.RESOLVED):
            raise InvalidStateTransition(
                f"alert {alert_pk} is {alert.status}; cannot become {status}",
                user_message=f"This alert is already {alert.status}.",
                action_required="Reload the alert list.",
                details={"alert": alert_pk, "status": alert.status},
            )
        before = {"status": alert.status}
        alert.status, alert.acknowledged_by = status, actor
        alert.save(update_fields=["status", "acknowledged_by", "updated_at"])
        audit_record(actor=actor, action=f"core.alert.{status}", obj=alert, before=before, after={"status": status})
    return alert
