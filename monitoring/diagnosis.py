"""`manage.py diagnose`: health and stuck work at a glance, for a terminal or a monitoring script.

Each check is `ok`, `warn` (worth knowing, nobody has to act) or `fail` (a person has to act). The exit code
is 0 when no check fails, 1 when one does, 2 when the database cannot be reached (nothing else can be judged).

| check          | fails when                                                                                    |
|----------------|-----------------------------------------------------------------------------------------------|
| database       | it does not answer (exit code 2)                                                              |
| redis          | REDIS_URL is set and Redis does not answer (breakers, availability and the Celery broker)     |
| circuits       | a provider's circuit is open (half-open, or unreadable: warn)                                 |
| alerts         | an open critical alert (open warnings, acknowledged alerts: warn)                             |
| movements      | a movement unknown past ALERT_UNKNOWN_AFTER_MINUTES, a sync overdue by more than the grace,   |
|                | or a movement whose sync schedule ran out (escalated)                                         |
| payout batches | never: batches in flight are listed                                                           |
| locks          | a processing lock past its expiry that nobody released                                        |
| reconciliation | an open reconciliation issue                                                                  |
| escrow         | a held deal past deadline + ESCROW_TIMEOUT_GRACE + the grace that the timeout job has not     |
|                | handled, or one whose timeout Stripe refused                                                  |

The grace (10 minutes by default) leaves room for the every-minute beat jobs before anything counts as stuck.
Reads only: counts, minima and a few rows, on indexed columns.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import DatabaseError
from django.db.models import Count, Min
from django.utils import timezone

from core.alerts import ACTIVE
from core.locks import locks_stale
from core.models import Alert, ProcessingLock
from escrow.models import EscrowDeal
from monitoring.checks import movements_unknown_overdue, unknown_after
from monitoring.health import HEALTHY, REDIS_USERS, check_database, check_redis
from monitoring.models import ReconciliationIssue
from payouts.models import PayoutBatch
from providers.breaker import CircuitState, breaker_for
from providers.models import MoneyMovement, Provider

OK, WARN, FAIL = "ok", "warn", "fail"
DEFAULT_GRACE = timedelta(minutes=10)


@dataclass
class Check:
    name: str
    status: str
    summary: str
    details: dict[str, Any] = field(default_factory=dict)


@dataclass
class Diagnosis:
    checked_at: datetime
    checks: list[Check]

    @property
    def database_reachable(self) -> bool:
        return all(check.status != FAIL for check in self.checks if check.name == "database")

    @property
    def exit_code(self) -> int:
        if not self.database_reachable:
            return 2
        return 1 if any(check.status == FAIL for check in self.checks) else 0

    @property
    def failing(self) -> list[str]:
        return [check.name for check in self.checks if check.status == FAIL]


def diagnose(*, now: datetime | None = None, grace: timedelta = DEFAULT_GRACE) -> Diagnosis:
    now = now or timezone.now()
    checks = [_database(), _redis(), _circuits()]
    if checks[0].status != FAIL:
        database_checks: dict[str, Callable[[], Check]] = {
            "alerts": _alerts,
            "movements": lambda: _movements(now, grace),
            "payout batches": _payout_batches,
            "locks": lambda: _locks(now),
            "reconciliation": _reconciliation,
            "escrow": lambda: _escrow(now, grace),
        }
        checks += [_guarded(name, check) for name, check in database_checks.items()]
    return Diagnosis(checked_at=now, checks=checks)


def _guarded(name: str, check: Callable[[], Check]) -> Check:
    """A check whose query fails (the database went away meanwhile, a timeout) fails by itself."""
    try:
        return check()
    except DatabaseError as error:
        return Check(name, FAIL, f"could not be read: {type(error).__name__}: {error}".strip())


def _age(since: datetime | None, now: datetime | None = None) -> str:
    if since is None:
        return "-"
    seconds = int(((now or timezone.now()) - since).total_seconds())
    if seconds < 3600:
        return f"{seconds // 60} min"
    if seconds < 2 * 86400:
        return f"{seconds // 3600} h {seconds % 3600 // 60} min"
    return f"{seconds // 86400} days"


# --- services ------------------------------------------------------------------------------------------


def _database() -> Check:
    result = check_database()  # the rule of /api/health/database
    if result.status == HEALTHY:
        return Check("database", OK, f"reachable ({result.details['vendor']})", {"vendor": result.details["vendor"]})
    return Check("database", FAIL, "; ".join(result.reasons))


def _redis() -> Check:
    result = check_redis()  # the rule of /api/health/redis
    where = result.details.get("url", "")
    if not result.details.get("configured"):
        return Check("redis", OK, "not configured (embedded mode: tasks run in-process, breakers per process)")
    if result.status == HEALTHY:
        return Check("redis", OK, f"reachable at {where}", {"url": where})
    summary = f"unreachable at {where}: {result.details.get('error', '')} ({REDIS_USERS})"
    return Check("redis", FAIL, summary, {"url": where, "error": result.details.get("error", "")})


def _circuits() -> Check:
    states: dict[str, str] = {}
    notes: list[str] = []
    for provider in Provider.values:
        try:
            state = breaker_for(provider).state()
        except Exception as error:  # Redis down: unknown, shown by the redis check
            states[provider] = "unknown"
            notes.append(f"{provider} unknown ({type(error).__name__})")
            continue
        states[provider] = state.state.value
        if state.state == CircuitState.OPEN:
            retry = f", retry at {state.retry_at:%H:%M:%S} UTC" if state.retry_at else ""
            notes.append(f"{provider} OPEN since {_age(state.opened_at)}{retry}")
        elif state.state == CircuitState.HALF_OPEN:
            notes.append(f"{provider} half-open (probing)")
    values = set(states.values())
    status = FAIL if CircuitState.OPEN.value in values else WARN if values - {CircuitState.CLOSED.value} else OK
    summary = "; ".join(notes) if notes else f"all closed ({', '.join(states)})"
    return Check("circuits", status, summary, {"states": states})


# --- people and stuck work -------------------------------------------------------------------------------


def _alerts() -> Check:
    active = Alert.objects.filter(status__in=ACTIVE)
    counts: dict[str, int] = {}
    for row in active.values("status", "severity").annotate(count=Count("pk")):
        counts[f"{row['status']}_{row['severity']}"] = row["count"]
    open_critical = counts.get(f"{Alert.Status.OPEN}_{Alert.Severity.CRITICAL}", 0)
    listed = [
        {"key": a.key, "severity": a.severity, "status": a.status, "title": a.title, "occurrences": a.occurrences}
        for a in active.order_by("severity", "-last_raised_at")[:10]  # "critical" sorts before "warning"
    ]
    status = FAIL if open_critical else WARN if counts else OK
    summary = ", ".join(f"{count} {name.replace('_', ' ')}" for name, count in sorted(counts.items())) or "none open"
    return Check("alerts", status, summary, {"counts": counts, "latest": listed})


def _movements(now: datetime, grace: timedelta) -> Check:
    open_rows = MoneyMovement.objects.filter(status__in=MoneyMovement.OPEN)
    by_status = {
        row["status"]: {"count": row["count"], "oldest": row["oldest"]}
        for row in open_rows.values("status").annotate(count=Count("pk"), oldest=Min("created_at"))
    }
    unknown_overdue = movements_unknown_overdue(now=now).count()
    overdue = open_rows.filter(next_sync_at__lt=now - grace)
    overdue_count = overdue.count()
    escalated = open_rows.filter(next_sync_at__isnull=True, escalated_at__isnull=False).count()
    details = {
        "by_status": {s: {"count": v["count"], "oldest_age": _age(v["oldest"], now)} for s, v in by_status.items()},
        "unknown_past_threshold": unknown_overdue,
        "unknown_threshold_minutes": int(unknown_after().total_seconds() // 60),
        "overdue_syncs": overdue_count,
        "oldest_overdue_sync": _age(overdue.aggregate(oldest=Min("next_sync_at"))["oldest"], now),
        "escalated": escalated,
    }
    parts = [f"{v['count']} {s} (oldest {details['by_status'][s]['oldest_age']})" for s, v in by_status.items()]
    if unknown_overdue:
        parts.append(f"{unknown_overdue} unknown for over {details['unknown_threshold_minutes']} min")
    if overdue_count:
        parts.append(f"{overdue_count} sync(s) overdue (oldest due {details['oldest_overdue_sync']} ago)")
    if escalated:
        parts.append(f"{escalated} escalated to staff (schedule ran out)")
    status = FAIL if unknown_overdue or overdue_count or escalated else OK
    return Check("movements", status, "; ".join(parts) or "nothing in flight", details)


def _payout_batches() -> Check:
    in_flight = PayoutBatch.objects.filter(status__in=PayoutBatch.ACTIVE)
    rows = in_flight.values("status").annotate(count=Count("pk"), oldest=Min("updated_at"))
    by_status = {row["status"]: {"count": row["count"], "oldest_age": _age(row["oldest"])} for row in rows}
    summary = "; ".join(f"{v['count']} {s} (oldest {v['oldest_age']})" for s, v in by_status.items())
    return Check("payout batches", OK, summary or "none in flight", {"by_status": by_status})


def _locks(now: datetime) -> Check:
    stale = list(locks_stale(now=now)[:10])
    held = ProcessingLock.objects.filter(expires_at__gt=now).count()
    listed = [{"key": lock.key, "holder": lock.holder, "expired": _age(lock.expires_at, now)} for lock in stale]
    stale_count = locks_stale(now=now).count() if len(stale) == 10 else len(stale)
    if stale_count:
        names = ", ".join(f"{lock['key']} ({lock['holder']}, expired {lock['expired']} ago)" for lock in listed)
        return Check("locks", FAIL, f"{stale_count} stale: {names}", {"held": held, "stale": listed})
    return Check("locks", OK, f"{held} held, none stale", {"held": held, "stale": []})


def _reconciliation() -> Check:
    open_issues = ReconciliationIssue.objects.filter(status=ReconciliationIssue.Status.OPEN)
    days = list(open_issues.values("provider", "date").annotate(count=Count("pk")).order_by("date")[:20])
    total = sum(row["count"] for row in days) if len(days) < 20 else open_issues.count()
    listed = [{"provider": row["provider"], "date": str(row["date"]), "open": row["count"]} for row in days]
    if not total:
        return Check("reconciliation", OK, "no open issues", {"open": 0, "days": []})
    names = ", ".join(f"{row['provider']} {row['date']}: {row['open']}" for row in listed)
    return Check("reconciliation", FAIL, f"{total} open issue(s): {names}", {"open": total, "days": listed})


def _escrow(now: datetime, grace: timedelta) -> Check:
    held = EscrowDeal.objects.filter(status=EscrowDeal.Status.HELD)
    past_due = held.filter(timed_out_at__isnull=True, deadline__lte=now - settings.ESCROW_TIMEOUT_GRACE - grace)
    refused = held.filter(timed_out_at__isnull=False)
    awaiting = EscrowDeal.objects.filter(status=EscrowDeal.Status.AWAITING_APPROVAL, deadline__lte=now).count()
    details = {
        "past_deadline_unhandled": past_due.count(),
        "oldest_deadline": _age(past_due.aggregate(oldest=Min("deadline"))["oldest"], now),
        "timeout_refused": refused.count(),
        "awaiting_approval_past_deadline": awaiting,
    }
    parts = []
    if details["past_deadline_unhandled"]:
        parts.append(
            f"{details['past_deadline_unhandled']} held past deadline and not handled by the timeout job "
            f"(oldest deadline {details['oldest_deadline']} ago)"
        )
    if details["timeout_refused"]:
        parts.append(f"{details['timeout_refused']} whose timeout Stripe refused")
    if awaiting:
        parts.append(f"{awaiting} past deadline awaiting release approval")
    status = FAIL if details["past_deadline_unhandled"] or details["timeout_refused"] else WARN if awaiting else OK
    return Check("escrow", status, "; ".join(parts) or "no deal past its deadline", details)
