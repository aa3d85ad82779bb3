"""Reads for the dashboard and the staff API: figures from the summary tables only, never from raw history.

Every function takes a `kind` (analytics.models.Kind: payment, payment_attempt, refund, payout, payout_batch,
escrow, purchase, purchase_refund) where it applies and `days`, the window: the last `days` UTC days up to and
including today (1 to 366). It returns plain dicts and lists of str, int and None, ready for JSON and a chart:

    labels       the window's days, oldest first, as "YYYY-MM-DD"; every day is there, with or without data
    series       one entry per provider (and currency, where amounts are involved), sorted; each list in it
                 has one value per label
    as_of        when the newest summary row read was computed (ISO 8601, UTC), or None if there is none yet

Amounts are integers in minor units of the series' currency (never summed across currencies). Rates are
integer basis points (10000 = 100%), rounded half up, None on a day with nothing to divide by.

volume_by_provider_day(kind, days=14) -> {
    "kind", "days", "labels", "as_of",
    "series": [{"provider", "currency", "count": [int], "amount_minor": [int],
                "succeeded_count": [int], "succeeded_amount_minor": [int]}]}
    All rows created that day (any status), and those of them that succeeded.

success_rate_by_provider_day(kind, days=14) -> {
    "kind", "days", "labels", "as_of",
    "series": [{"provider", "succeeded": [int], "failed": [int], "rate_bps": [int | None]}]}
    rate = succeeded / (succeeded + failed); what counts as each, per kind, is in analytics.kinds.

failure_reasons(kind, days=14, top=10) -> {
    "kind", "days", "as_of",
    "labels": [reason, ...],      the `top` reasons by count over the window, most frequent first
    "totals": [int, ...],         count per reason, all providers
    "series": [{"provider", "data": [int per reason]}]}

refund_rate_by_provider_day(days=14, kind="payment") -> {
    "kind", "days", "labels", "as_of",
    "series": [{"provider", "currency", "paid_minor": [int], "refunded_minor": [int], "rate_bps": [int | None]}]}
    kind is "payment" (refunds of payments) or "purchase" (purchase refunds): succeeded refunds created that day
    over the succeeded amount of that kind created that day, so a day can exceed 10000 when older sales are
    refunded.

seconds_to_final_by_provider_day(kind, days=14) -> {
    "kind", "days", "labels", "as_of",
    "series": [{"provider", "final_count": [int], "average_seconds": [int | None]}]}
    Rows of that day already in a final state (and timed, see analytics.kinds), and their mean seconds from
    creation to that state, rounded down.

status_breakdown(kind, days=14) -> {
    "kind", "days", "as_of", "since", "until",
    "rows": [{"provider", "currency", "status", "count", "amount_minor"}]}
    Totals over the window per provider, currency and status, for a table.
"""

from __future__ import annotations

from collections import defaultdict
from datetime import date, timedelta
from typing import Any

from django.db.models import Max, Q, QuerySet, Sum

from analytics.kinds import REFUND_OF, SPECS
from analytics.models import DailyFailureReason, DailyStatusSummary, Kind
from analytics.services import utc_today

MAX_DAYS = 366
MAX_TOP = 50
KINDS: tuple[str, ...] = tuple(Kind.values)
REFUND_RATE_KINDS: tuple[str, ...] = tuple(REFUND_OF)


def volume_by_provider_day(kind: str, days: int = 14) -> dict[str, Any]:
    spec, labels = SPECS[_kind(kind)], _labels(days)
    rows = (
        _summaries(kind, labels)
        .values("day", "provider", "currency")
        .annotate(
            n=Sum("count"),
            amount=Sum("amount_minor"),
            ok_n=Sum("count", filter=Q(status__in=spec.succeeded)),
            ok_amount=Sum("amount_minor", filter=Q(status__in=spec.succeeded)),
        )
    )
    series = _series(
        labels,
        rows,
        ("provider", "currency"),
        {"count": "n", "amount_minor": "amount", "succeeded_count": "ok_n", "succeeded_amount_minor": "ok_amount"},
    )
    return _chart(kind, labels, series)


def success_rate_by_provider_day(kind: str, days: int = 14) -> dict[str, Any]:
    spec, labels = SPECS[_kind(kind)], _labels(days)
    rows = (
        _summaries(kind, labels)
        .values("day", "provider")
        .annotate(
            ok=Sum("count", filter=Q(status__in=spec.succeeded)), bad=Sum("count", filter=Q(status__in=spec.failed))
        )
    )
    series = _series(labels, rows, ("provider",), {"succeeded": "ok", "failed": "bad"})
    for line in series:
        line["rate_bps"] = [_bps(ok, ok + bad) for ok, bad in zip(line["succeeded"], line["failed"], strict=True)]
    return _chart(kind, labels, series)


def failure_reasons(kind: str, days: int = 14, top: int = 10) -> dict[str, Any]:
    labels = _labels(days)
    if not 1 <= top <= MAX_TOP:
        raise ValueError(f"top must be from 1 to {MAX_TOP}")
    rows = (
        DailyFailureReason.objects.filter(kind=_kind(kind), day__gte=labels[0], day__lte=labels[-1])
        .values("reason", "provider")
        .annotate(n=Sum("count"))
        .order_by()
    )
    totals: dict[str, int] = defaultdict(int)
    by_provider: dict[str, dict[str, int]] = defaultdict(dict)
    for row in rows:
        totals[row["reason"]] += row["n"]
        by_provider[row["provider"]][row["reason"]] = row["n"]
    reasons = sorted(totals, key=lambda reason: (-totals[reason], reason))[:top]
    return {
        "kind": kind,
        "days": len(labels),
        "labels": reasons,
        "totals": [totals[reason] for reason in reasons],
        "series": [
            {"provider": provider, "data": [counts.get(reason, 0) for reason in reasons]}
            for provider, counts in sorted(by_provider.items())
            if any(reason in counts for reason in reasons)
        ],
        "as_of": _as_of(DailyFailureReason.objects.filter(kind=kind, day__gte=labels[0])),
    }


def refund_rate_by_provider_day(days: int = 14, kind: str = Kind.PAYMENT) -> dict[str, Any]:
    if kind not in REFUND_OF:
        raise ValueError(f"refund rates are for {', '.join(REFUND_OF)}, not {kind!r}")
    labels = _labels(days)
    paid, refund = SPECS[kind], SPECS[REFUND_OF[kind]]
    rows = (
        DailyStatusSummary.objects.filter(kind__in=(paid.kind, refund.kind), day__gte=labels[0], day__lte=labels[-1])
        .values("day", "provider", "currency")
        .annotate(
            paid=Sum("amount_minor", filter=Q(kind=paid.kind, status__in=paid.succeeded)),
            refunded=Sum("amount_minor", filter=Q(kind=refund.kind, status__in=refund.succeeded)),
        )
        .order_by()
    )
    series = _series(labels, rows, ("provider", "currency"), {"paid_minor": "paid", "refunded_minor": "refunded"})
    for line in series:
        pairs = zip(line["refunded_minor"], line["paid_minor"], strict=True)
        line["rate_bps"] = [_bps(refunded, paid_minor) for refunded, paid_minor in pairs]
    as_of = _as_of(DailyStatusSummary.objects.filter(kind__in=(paid.kind, refund.kind), day__gte=labels[0]))
    return {"kind": kind, "days": len(labels), "labels": [str(day) for day in labels], "series": series, "as_of": as_of}


def seconds_to_final_by_provider_day(kind: str, days: int = 14) -> dict[str, Any]:
    labels = _labels(days)
    rows = (
        _summaries(kind, labels).values("day", "provider").annotate(n=Sum("final_count"), seconds=Sum("final_seconds"))
    )
    series = _series(labels, rows, ("provider",), {"final_count": "n", "total_seconds": "seconds"})
    for line in series:
        totals = line.pop("total_seconds")
        line["average_seconds"] = [
            seconds // n if n else None for n, seconds in zip(line["final_count"], totals, strict=True)
        ]
    return _chart(kind, labels, series)


def status_breakdown(kind: str, days: int = 14) -> dict[str, Any]:
    labels = _labels(days)
    rows = (
        _summaries(kind, labels)
        .values("provider", "currency", "status")
        .annotate(n=Sum("count"), amount=Sum("amount_minor"))
        .order_by("provider", "currency", "status")
    )
    return {
        "kind": kind,
        "days": len(labels),
        "since": str(labels[0]),
        "until": str(labels[-1]),
        "rows": [
            {
                "provider": row["provider"],
                "currency": row["currency"],
                "status": row["status"],
                "count": int(row["n"]),
                "amount_minor": int(row["amount"]),
            }
            for row in rows
        ],
        "as_of": _as_of(_summaries(kind, labels)),
    }


# --- helpers ------------------------------------------------------------------------------


def _kind(kind: str) -> str:
    if kind not in SPECS:
        raise ValueError(f"unknown kind {kind!r}; one of {', '.join(KINDS)}")
    return kind


def _labels(days: int) -> list[date]:
    if not 1 <= days <= MAX_DAYS:
        raise ValueError(f"days must be from 1 to {MAX_DAYS}")
    today = utc_today()
    return [today - timedelta(days=back) for back in range(days - 1, -1, -1)]


def _summaries(kind: str, labels: list[date]) -> QuerySet[DailyStatusSummary]:
    return DailyStatusSummary.objects.filter(kind=_kind(kind), day__gte=labels[0], day__lte=labels[-1]).order_by()


def _series(labels: list[date], rows: Any, keys: tuple[str, ...], figures: dict[str, str]) -> list[dict[str, Any]]:
    """Rows of (day, *keys, figures) as one entry per key, each figure a list aligned with `labels` (0 if none)."""
    position = {day: index for index, day in enumerate(labels)}
    lines: dict[tuple[str, ...], dict[str, Any]] = {}
    for row in rows:
        key = tuple(row[name] for name in keys)
        line = lines.setdefault(
            key, {**dict(zip(keys, key, strict=True)), **{name: [0] * len(labels) for name in figures}}
        )
        index = position[row["day"]]
        for name, column in figures.items():
            line[name][index] += int(row[column] or 0)
    return [lines[key] for key in sorted(lines)]


def _chart(kind: str, labels: list[date], series: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "kind": kind,
        "days": len(labels),
        "labels": [str(day) for day in labels],
        "series": series,
        "as_of": _as_of(_summaries(kind, labels)),
    }


def _as_of(rows: QuerySet) -> str | None:
    newest = rows.aggregate(newest=Max("computed_at"))["newest"]
    return newest.isoformat().replace("+00:00", "Z") if newest else None


def _bps(part: int, whole: int) -> int | None:
    """part / whole in basis points, rounded half up; None when there is nothing to divide by."""
    if whole <= 0:
        return None
    return (2 * part * 10_000 + whole) // (2 * whole)
