"""Running a reconciliation: one provider, one UTC day, by staff, the nightly task or the command.

A run takes the processing lock `reconciliation:{provider}:{day}` (two runs of one day never overlap), records
a `ReconciliationRun`, stages the provider report and our records, compares them with the ledger in one
transaction, and deletes its staging rows when it ends, even on failure. A failed run is marked `failed` with
its error and the error re-raised. The day may not be in the future.

Staff alerts: a run that leaves open issues for the day raises the one alert `reconciliation:{provider}:{day}`;
it resolves itself when a rerun leaves none open or staff resolve the last one (issues.py). A failed run raises
`reconciliation:{provider}:{day}:failed`, resolved by the next run of that day that succeeds.
"""

from __future__ import annotations

from datetime import date
from time import monotonic

import structlog
from django.contrib.auth.base_user import AbstractBaseUser
from django.db import transaction
from django.utils import timezone

from core.alerts import alert_raise, alert_resolve
from core.errors import InvalidRequest
from core.locks import processing_lock
from core.permissions import require_permission
from core.services import audit_record
from monitoring.models import ReconciliationIssue, ReconciliationProviderRow, ReconciliationRecordRow, ReconciliationRun
from monitoring.reconciliation.matching import _compare
from monitoring.reconciliation.sources import (
    PROVIDER_SOURCES,
    RECORD_SOURCES,
    ProviderPages,
    RecordSource,
    day_bounds,
)
from monitoring.reconciliation.staging import _stage_provider, _stage_records

log = structlog.get_logger(__name__)

RUN_PERMISSION = "monitoring.run_reconciliation"


def reconciliation_run(
    *,
    day: date,
    provider: str,
    trigger: str,
    actor: AbstractBaseUser | None = None,
    provider_pages: ProviderPages | None = None,
    record_sources: list[RecordSource] | None = None,
) -> ReconciliationRun:
    """Compare one provider's day; staff (`actor`) need `monitoring.run_reconciliation`, jobs pass None.

    `provider_pages` and `record_sources` replace the registered sources (the benchmark feeds generated pages).
    """
    if actor is not None:
        require_permission(actor, RUN_PERMISSION)
    if trigger not in ReconciliationRun.Trigger.values:
        raise InvalidRequest(f"unknown trigger {trigger!r}", details={"allowed": ReconciliationRun.Trigger.values})
    if provider_pages is None and provider not in PROVIDER_SOURCES:
        raise InvalidRequest(
            f"no reconciliation source for provider {provider!r}",
            user_message=f"Reconciliation is not available for {provider!r}.",
            action_required=f"Choose one of: {', '.join(sorted(PROVIDER_SOURCES))}.",
            details={"provider": provider, "available": sorted(PROVIDER_SOURCES)},
        )
    if day > timezone.now().date():
        raise InvalidRequest(
            f"{day} is in the future",
            user_message="A day that has not happened yet cannot be reconciled.",
            action_required="Choose today or an earlier day (UTC).",
            details={"date": day.isoformat()},
        )
    holder = actor.get_username() if actor is not None else f"reconciliation ({trigger})"
    with processing_lock(key=f"reconciliation:{provider}:{day}", holder=holder, reason=f"reconciling {day}"):
        run = ReconciliationRun.objects.create(
            date=day, provider=provider, trigger=trigger, triggered_by=actor, started_at=timezone.now()
        )
        if actor is not None:
            audit_record(actor=actor, action="monitoring.reconciliation.run", obj=run, after={"date": str(day)})
        try:
            _reconcile(run, provider_pages, record_sources)
        except Exception as error:
            ReconciliationRun.objects.filter(pk=run.pk).update(
                status=ReconciliationRun.Status.FAILED, finished_at=timezone.now(), error=str(error)[:2_000]
            )
            log.exception("reconciliation.failed", provider=provider, date=str(day), run=run.pk)
            _alert_failed(run, error)
            raise
        finally:
            ReconciliationProviderRow.objects.filter(run_id=run.pk).delete()
            ReconciliationRecordRow.objects.filter(run_id=run.pk).delete()
    run.refresh_from_db()
    _alert_if_open(run)
    return run


def _reconcile(
    run: ReconciliationRun, provider_pages: ProviderPages | None, record_sources: list[RecordSource] | None
) -> None:
    start, end = day_bounds(run.date)
    began = monotonic()
    pages = provider_pages if provider_pages is not None else PROVIDER_SOURCES[run.provider](start, end)
    run.provider_rows = _stage_provider(run.pk, pages)
    staged = monotonic()
    sources = RECORD_SOURCES.get(run.provider, []) if record_sources is None else record_sources
    run.record_rows = _stage_records(run.pk, run.provider, sources, start, end)
    recorded = monotonic()
    with transaction.atomic():
        _compare(run, start, end, check_records=bool(sources))
    seconds = {"provider": staged - began, "records": recorded - staged, "compare": monotonic() - recorded}
    run.summary["seconds"] = {phase: round(value, 3) for phase, value in seconds.items()}
    ReconciliationRun.objects.filter(pk=run.pk).update(summary=run.summary)


def issues_alert_key(provider: str, day: date) -> str:
    return f"reconciliation:{provider}:{day}"


def _alert_failed(run: ReconciliationRun, error: Exception) -> None:
    alert_raise(
        key=f"{issues_alert_key(run.provider, run.date)}:failed",
        title=f"Reconciliation of {run.provider} for {run.date} failed",
        detail=f"Run #{run.pk} stopped: {error}"[:2_000],
        action_required=f"Check the run in /admin/monitoring/reconciliationrun/{run.pk}/change/, fix the cause "
        f"(the provider's report, the database), then run it again: manage.py reconcile_daily "
        f"--date {run.date} --provider {run.provider}.",
    )


def _alert_if_open(run: ReconciliationRun) -> None:
    alert_resolve(key=f"{issues_alert_key(run.provider, run.date)}:failed", reason=f"run #{run.pk} succeeded")
    open_count = run.summary.get("issues_by_status", {}).get(ReconciliationIssue.Status.OPEN, 0)
    if not open_count:
        alert_resolve(key=issues_alert_key(run.provider, run.date), reason=f"run #{run.pk} found no open issue")
        return
    alert_raise(
        key=issues_alert_key(run.provider, run.date),
        title=f"{open_count} open reconciliation issue(s) for {run.provider} on {run.date}",
        detail=f"Run #{run.pk}: {run.issue_count} mismatch(es), {run.new_issue_count} new, "
        f"{run.matched_count} matched.",
        action_required="Review the reconciliation issues of that day: assign, investigate, resolve with a note.",
    )
