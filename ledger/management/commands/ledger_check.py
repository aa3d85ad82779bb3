"""`manage.py ledger_check`: recompute the ledger from its entries; exit 1 on any difference."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError

from ledger.integrity import Finding, ledger_integrity_report


def _finding_lines(finding: Finding) -> list[str]:
    details = ", ".join(f"{key}={value}" for key, value in finding.details.items())
    return [f"[{finding.code}] {finding.message}", f"    {details}"]


class Command(BaseCommand):
    help = "Recompute sums, versions, running balances and pending amounts from the entries; exit 1 on a difference."

    def handle(self, *args: Any, **options: Any) -> None:
        report = ledger_integrity_report()
        self.stdout.write(f"Ledger integrity check: checked {report.checked_summary()}.")
        if report.is_clean:
            self.stdout.write(self.style.SUCCESS("OK: no differences found."))
            return
        for finding in report.findings:
            self.stdout.write("\n".join(_finding_lines(finding)))
        raise CommandError(f"ledger integrity check found {len(report.findings)} difference(s)")
