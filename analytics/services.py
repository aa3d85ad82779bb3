"""The rollup: raw rows of each kind grouped by UTC day, provider, currency and status in the database, written
to the summary tables with upserts.

Invariants:
- one recompute of a day range replaces every summary row of those days and that kind, in one transaction:
  groups found are upserted on their natural key and stamped with the run's time, rows of the range left with
  an older stamp (groups that no longer exist) are deleted; so a rerun gives the same rows;
- recomputes of the same kind never interleave (a transaction-scoped advisory lock on PostgreSQL; SQLite
  serialises writers at BEGIN);
- raw history is read only for the days recomputed, through `created_at` (indexed), never row by row.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

import structlog
from django.conf import settings
from django.db import connection, models, transaction
from django.db.models import Count, DurationField, ExpressionWrapper, F, Q, Sum
from django.db.models.functions import TruncDate
from django.utils import timezone

from analytics.kinds import SPECS, KindSpec
from analytics.models import DailyFailureReason, DailyStatusSummary

log = structlog.get_logger(__name__)

STATUS_KEY = ["day", "kind", "provider", "currency", "status"]
REASON_KEY = ["day", "kind", "provider", "reason"]


@dataclass(frozen=True)
class RollupResult:
    first: date
    last: date
    status_rows: int  # summary rows written (inserted or updated)
    reason_rows: int
    deleted_rows: int  # rows of groups that no longer exist


def utc_today() -> date:
    return timezone.now().astimezone(UTC).date()


def rollup_recent(*, days: int = 2) -> RollupResult:
    """Recompute the last `days` UTC days, today included (the beat job: 2, today and yesterday)."""
    if days < 1:
        raise ValueError("days must be at least 1")
    today = utc_today()
    return rollup_days(first=today - timedelta(days=days - 1), last=today)


def rollup_days(*, first: date, last: date, kinds: Iterable[str] | None = None) -> RollupResult:
    """Recompute every summary row of the UTC days `first`..`last` (inclusive), in chunks of
    ANALYTICS_ROLLUP_CHUNK_DAYS days so a backfill over years never holds one huge transaction."""
    if last < first:
        raise ValueError(f"the range ends ({last}) before it starts ({first})")
    chosen = [SPECS[kind] for kind in kinds] if kinds is not None else list(SPECS.values())
    chunk = timedelta(days=max(1, settings.ANALYTICS_ROLLUP_CHUNK_DAYS))
    totals = [0, 0, 0]
    start = first
    while start <= last:
        end = min(last, start + chunk - timedelta(days=1))
        for spec in chosen:
            for index, figure in enumerate(_rollup_kind(spec, start, end)):
                totals[index] += figure
        start = end + timedelta(days=1)
    log.info("analytics.rollup", first=str(first), last=str(last), kinds=[s.kind for s in chosen], rows=totals)
    return RollupResult(first, last, *totals)


def _rollup_kind(spec: KindSpec, first: date, last: date) -> tuple[int, int, int]:
    with transaction.atomic():
        _serialise(spec.kind)
        computed_at = timezone.now()
        statuses = [
            DailyStatusSummary(kind=spec.kind, computed_at=computed_at, **group)
            for group in _status_groups(spec, first, last)
        ]
        reasons = [
            DailyFailureReason(kind=spec.kind, computed_at=computed_at, **group)
            for group in _reason_groups(spec, first, last)
        ]
        _upsert(DailyStatusSummary, statuses, STATUS_KEY, ["count", "amount_minor", "final_count", "final_seconds"])
        _upsert(DailyFailureReason, reasons, REASON_KEY, ["count"])
        deleted = 0
        for model in (DailyStatusSummary, DailyFailureReason):
            stale = model.objects.filter(kind=spec.kind, day__gte=first, day__lte=last).exclude(computed_at=computed_at)
            deleted += stale.delete()[0]
    return len(statuses), len(reasons), deleted


def _serialise(kind: str) -> None:
    """Make recomputes of one kind wait for each other (the stale-row delete relies on it)."""
    if connection.vendor == "postgresql":
        key = zlib.crc32(f"analytics.rollup:{kind}".encode())
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_xact_lock(%s)", [key])


def _upsert(model: type[models.Model], rows: list[Any], key: list[str], figures: list[str]) -> None:
    if rows:
        model.objects.bulk_create(  # type: ignore[attr-defined]
            rows,
            batch_size=500,
            update_conflicts=True,
            unique_fields=key,
            update_fields=[*figures, "computed_at"],
        )


def _raw_rows(spec: KindSpec, first: date, last: date) -> models.QuerySet:
    start = datetime.combine(first, time.min, tzinfo=UTC)
    end = datetime.combine(last + timedelta(days=1), time.min, tzinfo=UTC)
    return spec.model._default_manager.filter(created_at__gte=start, created_at__lt=end).annotate(
        bucket_day=TruncDate("created_at", tzinfo=UTC),
        bucket_provider=spec.provider,
        bucket_currency=spec.currency,
    )


def _status_groups(spec: KindSpec, first: date, last: date) -> list[dict[str, Any]]:
    figures: dict[str, Any] = {
        "n": Count("pk"),
        "amount": Sum(spec.amount, output_field=models.BigIntegerField()),
    }
    if spec.finished_at is not None:
        timed = Q(status__in=spec.final) & spec.timed
        duration = ExpressionWrapper(spec.finished_at - F("created_at"), output_field=DurationField())
        figures |= {"timed_n": Count("pk", filter=timed), "timed_total": Sum(duration, filter=timed)}
    grouped = (
        _raw_rows(spec, first, last)
        .values("bucket_day", "bucket_provider", "bucket_currency", "status")
        .annotate(**figures)
        .order_by()
    )
    return [
        {
            "day": _as_date(group["bucket_day"]),
            "provider": group["bucket_provider"] or "",
            "currency": group["bucket_currency"] or "",
            "status": group["status"],
            "count": group["n"],
            "amount_minor": int(group["amount"] or 0),
            "final_count": group.get("timed_n") or 0,
            "final_seconds": _whole_seconds(group.get("timed_total")),
        }
        for group in grouped
    ]


def _reason_groups(spec: KindSpec, first: date, last: date) -> list[dict[str, Any]]:
    grouped = (
        _raw_rows(spec, first, last)
        .filter(status__in=spec.failed)
        .annotate(bucket_reason=spec.reason())
        .values("bucket_day", "bucket_provider", "bucket_reason")
        .annotate(n=Count("pk"))
        .order_by()
    )
    return [
        {
            "day": _as_date(group["bucket_day"]),
            "provider": group["bucket_provider"] or "",
            "reason": group["bucket_reason"] or "",
            "count": group["n"],
        }
        for group in grouped
    ]


def _as_date(value: date | str) -> date:
    return date.fromisoformat(value) if isinstance(value, str) else value


def _whole_seconds(total: timedelta | None) -> int:
    if total is None:
        return 0
    return max(0, total // timedelta(seconds=1))  # a clock step backwards never makes a negative duration
