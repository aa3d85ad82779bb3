"""Celery entry points for monitoring: thin, re-entrant, each calling one service."""

from __future__ import annotations

from datetime import date, timedelta

import structlog
from celery import shared_task
from django.conf import settings
from django.utils import timezone

from core.errors import AppError
from monitoring.checks import stuck_work_check
from monitoring.heartbeat import stamp_write
from monitoring.models import ReconciliationRun
from monitoring.reconciliation import reconciliation_run

log = structlog.get_logger(__name__)


@shared_task(name="monitoring.reconcile_day")
def reconcile_day_task(day: str, provider: str) -> int:
    """Reconcile one provider's day (ISO date). Returns the run id; a rerun of a day is safe."""
    run = reconciliation_run(day=date.fromisoformat(day), provider=provider, trigger=ReconciliationRun.Trigger.SCHEDULE)
    return run.pk


@shared_task(name="monitoring.reconcile_yesterday")
def reconcile_yesterday_task() -> dict[str, int]:
    """Nightly (beat): yesterday, UTC, for every provider in RECONCILIATION_PROVIDERS. Returns run ids."""
    yesterday = timezone.now().date() - timedelta(days=1)
    runs: dict[str, int] = {}
    for provider in settings.RECONCILIATION_PROVIDERS:
        try:
            runs[provider] = reconcile_day_task(yesterday.isoformat(), provider)
        except AppError as error:  # one provider's failure must not stop the others; the run row says why
            log.error("reconciliation.nightly_failed", provider=provider, date=str(yesterday), error=error.message)
    return runs


@shared_task(name="monitoring.check_stuck_work")
def check_stuck_work_task() -> dict[str, int]:
    """Every 5 minutes (beat): alerts for stale processing locks and movements unknown for too long."""
    return stuck_work_check()


@shared_task(name="monitoring.heartbeat", ignore_result=True)
def heartbeat_task() -> None:
    """Every minute (beat; expires after 2 minutes): stamps when a worker ran it, for /api/health/celery."""
    stamp_write("flow")
