"""Celery entry points for the ledger: thin, re-entrant, each calling one function."""

from __future__ import annotations

import structlog
from celery import shared_task

from ledger.integrity import ledger_integrity_report
from ledger.services import holds_expire_due

log = structlog.get_logger(__name__)


@shared_task(name="ledger.check_integrity")
def check_integrity_task() -> int:
    """Run the integrity check; log every finding as an error. Returns the number of findings."""
    report = ledger_integrity_report()
    for finding in report.findings:
        log.error("ledger.integrity_finding", code=finding.code, message=finding.message, details=finding.details)
    log.info("ledger.integrity_checked", checked=report.checked_summary(), findings=len(report.findings))
    return len(report.findings)


@shared_task(name="ledger.expire_holds")
def expire_holds_task() -> int:
    """Expire pending holds past their expiry. Returns how many were expired."""
    return holds_expire_due()
