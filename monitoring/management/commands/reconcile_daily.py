"""`manage.py reconcile_daily --date YYYY-MM-DD [--provider stripe]`: compare one day; exit 1 on open issues."""

from __future__ import annotations

from datetime import date, timedelta
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.utils import timezone

from core.errors import AppError
from monitoring.models import ReconciliationIssue, ReconciliationRun
from monitoring.reconciliation import PROVIDER_SOURCES, reconciliation_run


def _day(value: str) -> date:
    try:
        return date.fromisoformat(value)
    except ValueError as error:
        raise CommandError(f"--date must be YYYY-MM-DD, got {value!r}") from error


class Command(BaseCommand):
    help = (
        "Reconcile one UTC day: ledger postings on the provider clearing accounts vs the provider's report vs our "
        "records. Prints the run summary; exits 1 when the day has open issues, 2 on a failed run."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--date", type=_day, default=None, help="The UTC day, YYYY-MM-DD (default: yesterday).")
        parser.add_argument("--provider", action="append", choices=sorted(PROVIDER_SOURCES), default=None)

    def handle(self, *args: Any, **options: Any) -> None:
        day = options["date"] or timezone.now().date() - timedelta(days=1)
        open_issues = 0
        for provider in options["provider"] or sorted(PROVIDER_SOURCES):
            try:
                run = reconciliation_run(day=day, provider=provider, trigger=ReconciliationRun.Trigger.COMMAND)
            except AppError as error:
                raise CommandError(
                    f"{provider} {day}: {error.user_message} {error.action_required}", returncode=2
                ) from error
            self._print(run)
            open_issues += run.summary.get("issues_by_status", {}).get(ReconciliationIssue.Status.OPEN, 0)
        if open_issues:
            raise CommandError(f"{open_issues} open reconciliation issue(s) for {day}", returncode=1)
        self.stdout.write(self.style.SUCCESS(f"OK: {day} reconciles, no open issues."))

    def _print(self, run: ReconciliationRun) -> None:
        seconds = (run.finished_at - run.started_at).total_seconds() if run.finished_at else 0.0
        self.stdout.write(
            f"{run.provider} {run.date} run #{run.pk}: read ledger={run.ledger_rows} provider={run.provider_rows} "
            f"records={run.record_rows}; matched={run.matched_count} issues={run.issue_count} "
            f"(new {run.new_issue_count}, fixed since last run {run.fixed_issue_count}) in {seconds:.1f} s"
        )
        for kind, by_currency in sorted(run.summary.get("by_kind", {}).items()):
            for currency, totals in sorted(by_currency.items()):
                self.stdout.write(
                    f"  {kind}: {totals['count']} {currency} ledger={totals['ledger_minor']} "
                    f"provider={totals['provider_minor']} records={totals['record_minor']}"
                )
        issues = ReconciliationIssue.objects.filter(last_seen_run=run, status=ReconciliationIssue.Status.OPEN).order_by(
            "kind", "provider_reference"
        )
        for issue in issues[:50]:
            self.stdout.write(f"  OPEN {issue.kind} {issue.provider_reference or '-'} {issue.currency}: {issue.detail}")
