"""Celery entry points for analytics: thin and re-entrant (a rerun recomputes the same rows)."""

from __future__ import annotations

from celery import shared_task
from django.conf import settings

from analytics.services import rollup_recent


@shared_task(name="analytics.roll_up_recent_days")
def roll_up_recent_days_task(days: int | None = None) -> dict[str, int]:
    """Beat: recompute the summary rows of the last `days` UTC days (default ANALYTICS_RECENT_DAYS: today and
    yesterday); the nightly run passes ANALYTICS_SETTLE_DAYS so late outcomes (unclaimed payouts, unknowns
    resolved days later) reach the day their rows were created."""
    result = rollup_recent(days=days or settings.ANALYTICS_RECENT_DAYS)
    return {"status_rows": result.status_rows, "reason_rows": result.reason_rows, "deleted_rows": result.deleted_rows}
