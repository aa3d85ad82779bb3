"""Alerts for staff: one per cause, emailed once to the finance group, closed by staff or by their source.

- `alert_raise(key=...)`: a cause (a stable key naming it, e.g. `circuit:stripe`; every key pattern is in
  docs/runbook.md) has at most one active alert (open, or acknowledged by someone on it). Raising it again
  counts one more occurrence and refreshes its title and detail; only a new alert is emailed.
- Email goes through Django's email backend (settings EMAIL_URL; the console in the demo) to the active users
  of the "Finance operator" and "Finance approver" groups who have an email address, plus ALERT_EMAILS. It is
  sent after the raising transaction commits (a rolled-back raise sends nothing); a failing mail server is
  logged and never reaches the caller, so alerting can never break the money path.
- A cause that comes back after its alert was resolved opens a new alert. A critical one is emailed again
  every time; a warning only when its last resolution is older than ALERT_WARNING_REOPEN_QUIET_MINUTES, so a
  flapping cause (a circuit opening and closing) does not flood the inbox.
- `alert_resolve(key=...)`: the source saw its cause clear (a circuit closed, a lock was released, the
  movement finished); audited as the system. `alert_close`: staff acknowledge or resolve in the admin
  (/admin/core/alert/), audited under their name.
"""

from __future__ import annotations

from datetime import timedelta

import structlog
from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.base_user import AbstractBaseUser
from django.core.mail import send_mail
from django.db import IntegrityError, transaction
from django.db.models import F
from django.utils import timezone

from core.errors import InvalidStateTransition
from core.models import Alert
from core.permissions import require_permission
from core.services import audit_record

log = structlog.get_logger(__name__)

ACTIVE = (Alert.Status.OPEN, Alert.Status.ACKNOWLEDGED)
ALERT_GROUPS = ("Finance operator", "Finance approver")  # core.roles
KEY_LENGTH = Alert._meta.get_field("key").max_length or 200


def alert_raise(
    *, key: str, title: str, detail: str = "", action_required: str = "", severity: str = Alert.Severity.WARNING
) -> Alert:
    """Open an alert, or count one more occurrence of the active alert with this key."""
    key = key[:KEY_LENGTH]
    log.warning("alert.raised", key=key, title=title, severity=severity)
    now = timezone.now()
    refreshed = {"title": title[:255], "detail": detail}
    if action_required:
        refreshed["action_required"] = action_required[:500]
    for _ in range(2):  # a concurrent raise may create the open row between our update and insert
        active = Alert.objects.filter(key=key, status__in=ACTIVE)
        if active.update(occurrences=F("occurrences") + 1, last_raised_at=now, updated_at=now, **refreshed):
            return active.latest("pk")
        try:
            with transaction.atomic():
                alert = Alert.objects.create(
                    key=key,
                    title=title[:255],
                    detail=detail,
                    action_required=action_required[:500],
                    severity=severity,
                    last_raised_at=now,
                )
        except IntegrityError:
            continue
        if _worth_emailing(alert):
            transaction.on_commit(lambda pk=alert.pk: alert_email(alert_pk=pk))
        return alert
    return Alert.objects.filter(key=key, status__in=ACTIVE).latest("pk")


def alert_resolve(*, key: str, reason: str = "") -> int:
    """The source saw the cause clear: resolve its active alert, audited as the system. Returns how many."""
    resolved = 0
    with transaction.atomic():
        for alert in Alert.objects.select_for_update().filter(key=key[:KEY_LENGTH], status__in=ACTIVE):
            before = {"status": alert.status}
            alert.status = Alert.Status.RESOLVED
            alert.save(update_fields=["status", "updated_at"])
            after = {"status": alert.status, "reason": reason or "the cause cleared"}
            audit_record(actor=None, action="core.alert.resolved", obj=alert, before=before, after=after)
            resolved += 1
    if resolved:
        log.info("alert.resolved", key=key, reason=reason)
    return resolved


def alert_keys_active(*, prefix: str) -> set[str]:
    """The keys of the active alerts whose key starts with `prefix` (for a source that resolves what cleared)."""
    return set(Alert.objects.filter(key__startswith=prefix, status__in=ACTIVE).values_list("key", flat=True))


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


# --- email -----------------------------------------------------------------------------------------


def _worth_emailing(alert: Alert) -> bool:
    """Every new alert, except a warning whose cause was resolved only moments ago (a flapping cause)."""
    if alert.severity == Alert.Severity.CRITICAL:
        return True
    quiet = timedelta(minutes=int(getattr(settings, "ALERT_WARNING_REOPEN_QUIET_MINUTES", 60)))
    recently = Alert.objects.filter(
        key=alert.key, status=Alert.Status.RESOLVED, updated_at__gte=alert.created_at - quiet
    ).exclude(pk=alert.pk)
    return not recently.exists()


def alert_recipients() -> list[str]:
    """Active finance operators and approvers with an email address, plus ALERT_EMAILS; each once."""
    users = get_user_model().objects.filter(is_active=True, groups__name__in=ALERT_GROUPS).exclude(email="")
    emails = set(users.values_list("email", flat=True))
    emails.update(address.strip() for address in getattr(settings, "ALERT_EMAILS", []) if address.strip())
    return sorted(emails)


def alert_email(*, alert_pk: int) -> bool:
    """Email one alert to the finance group. Never raises: a mail failure is logged (the alert row stays)."""
    try:
        alert = Alert.objects.filter(pk=alert_pk).first()
        if alert is None:
            return False
        recipients = alert_recipients()
        if not recipients:
            log.warning("alert.email_no_recipients", key=alert.key)
            return False
        send_mail(_subject(alert), _body(alert), None, recipients, fail_silently=False)
    except Exception:  # the mail server, or anything else: an alert must never break the caller
        log.exception("alert.email_failed", alert=alert_pk)
        return False
    log.info("alert.emailed", key=alert.key, recipients=len(recipients))
    return True


def _subject(alert: Alert) -> str:
    title = " ".join(alert.title.split())  # no line breaks in a header
    return f"[Back office] {alert.severity.upper()}: {title}"[:200]


def _body(alert: Alert) -> str:
    base = str(getattr(settings, "BACKOFFICE_URL", "")).rstrip("/")
    return "\n".join(
        [
            f"{alert.severity.upper()}: {alert.title}",
            "",
            f"What happened: {alert.detail or '(no detail)'}",
            f"What to do: {alert.action_required or 'See the runbook.'}",
            "",
            f"Alert key: {alert.key}",
            f"Raised at: {alert.last_raised_at:%Y-%m-%d %H:%M} UTC",
            f"Open it: {base}/admin/core/alert/{alert.pk}/change/",
            "Runbook: docs/runbook.md, under this key's pattern.",
            "",
            "Acknowledge the alert in the admin when you take it on, and resolve it when it is dealt with.",
            "Repeats of the same cause are counted on this alert and not emailed again.",
        ]
    )
