"""Checks for stuck work that no single writer sees, run by beat (`monitoring.check_stuck_work`, every 5 minutes)
and read by `manage.py diagnose`. Monitoring reads every app and writes only alerts (core.alerts).

- Unknown outcomes: a money movement whose outcome has been unknown for ALERT_UNKNOWN_AFTER_MINUTES (60 by
  default) since it was first sent. One summary alert per provider, `movements:unknown:<provider>` (warning):
  an outage leaves many movements unknown at once and one alert per movement would bury the cause; each
  movement still gets its own critical alert (`movement:<key>`) when the sweeper's schedule runs out. The
  summary resolves itself once no movement at that provider is past the threshold.
- Stale processing locks: core.locks.locks_stale_check (`lock:<key>`).
"""

from __future__ import annotations

from datetime import datetime, timedelta

from django.conf import settings
from django.db.models import Count, Q, QuerySet
from django.utils import timezone

from core.alerts import alert_keys_active, alert_raise, alert_resolve
from core.locks import locks_stale_check
from providers.models import MoneyMovement

UNKNOWN_ALERT_PREFIX = "movements:unknown:"
LISTED = 5  # movements named in an alert's detail


def unknown_after() -> timedelta:
    return timedelta(minutes=int(getattr(settings, "ALERT_UNKNOWN_AFTER_MINUTES", 60)))


def unknown_alert_key(provider: str) -> str:
    return f"{UNKNOWN_ALERT_PREFIX}{provider}"


def movements_unknown_overdue(*, now: datetime | None = None) -> QuerySet[MoneyMovement]:
    """Movements whose outcome has been unknown for longer than the threshold (since first sent)."""
    cutoff = (now or timezone.now()) - unknown_after()
    sent_before = Q(first_sent_at__lte=cutoff) | Q(first_sent_at__isnull=True, created_at__lte=cutoff)
    return MoneyMovement.objects.filter(sent_before, status=MoneyMovement.Status.UNKNOWN)


def movements_unknown_check(*, now: datetime | None = None) -> dict[str, int]:
    """One alert per provider with movements unknown past the threshold; the others' alerts resolve."""
    now = now or timezone.now()
    overdue = movements_unknown_overdue(now=now)
    by_provider = dict(overdue.values_list("provider").annotate(count=Count("pk")).values_list("provider", "count"))
    for provider, count in by_provider.items():
        _alert_unknown(provider, count, overdue.filter(provider=provider))
    cleared = alert_keys_active(prefix=UNKNOWN_ALERT_PREFIX) - {unknown_alert_key(p) for p in by_provider}
    for key in cleared:
        alert_resolve(key=key, reason=f"no movement unknown for over {_minutes()} minutes")
    return by_provider


def _minutes() -> int:
    return int(unknown_after().total_seconds() // 60)


def _alert_unknown(provider: str, count: int, movements: QuerySet[MoneyMovement]) -> None:
    oldest = list(movements.order_by("created_at")[:LISTED])
    listed = "; ".join(
        f"{m.operation} {m.key} (#{m.pk}, since {(m.first_sent_at or m.created_at):%Y-%m-%d %H:%M} UTC)" for m in oldest
    )
    more = f" and {count - len(oldest)} more" if count > len(oldest) else ""
    alert_raise(
        key=unknown_alert_key(provider),
        title=f"{count} money movement(s) at {provider}: outcome unknown for over {_minutes()} minutes",
        detail=f"We sent these and never learned whether the money moved: {listed}{more}. The sweeper keeps "
        "looking them up (5 min, 1 h, then daily) and alerts on each one whose schedule runs out.",
        action_required=f"Do not send anything again by hand. Check {provider}'s status (and the alert "
        f"circuit:{provider}), find the keys in {provider}'s dashboard, then use 'Sync now' in "
        f"/admin/providers/moneymovement/?status__exact=unknown&provider__exact={provider}.",
    )


def stuck_work_check(*, now: datetime | None = None) -> dict[str, int]:
    """The beat job: every check above. Returns what each found."""
    unknown = movements_unknown_check(now=now)
    return {"stale_locks": locks_stale_check(now=now), "unknown_movements": sum(unknown.values())}
