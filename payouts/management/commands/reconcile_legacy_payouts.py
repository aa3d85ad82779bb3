"""`manage.py reconcile_legacy_payouts --dry-run|--execute`: link imported legacy payouts to winners."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from core.money import Money
from payouts.legacy import ReconcileSummary, legacy_reconcile


def summary_lines(summary: ReconcileSummary) -> list[str]:
    verb = "Reconciled" if summary.executed else "Dry run, nothing written; would reconcile"
    linked = ", ".join(
        f"{Money(minor, currency).decimal_string()} {currency}"
        for currency, minor in sorted(summary.linked_minor_by_currency.items())
    )
    formats = ", ".join(f"{name} {n}" for name, n in sorted(summary.by_format.items()))
    return [
        f"{verb} {summary.considered} legacy payout(s) waiting: {formats or 'none'}.",
        f"Linked (winner marked paid, ledger posted): {summary.linked}, amounts: {linked or 'none'}",
        f"Needs review: {summary.needs_review} (conflicts {summary.conflicts}, duplicates {summary.duplicates}, "
        f"amount or user mismatches {summary.mismatches})",
        f"Ambiguous: {summary.ambiguous}",
        f"No match: {summary.no_match}",
        f"Left for the next run: {summary.locked} (cycle being processed), {summary.failed} (ledger refused)",
        f"Already reconciled by earlier runs: {summary.already_reconciled}; flagged earlier: "
        f"{summary.flagged_earlier}; not paid by PayPal: {summary.not_paid}",
    ]


class Command(BaseCommand):
    help = "Link imported legacy payouts to winners, mark them paid and post them to the ledger."

    def add_arguments(self, parser: CommandParser) -> None:
        mode = parser.add_mutually_exclusive_group(required=True)
        mode.add_argument("--dry-run", action="store_true", help="Say what would be done; write nothing.")
        mode.add_argument("--execute", action="store_true", help="Record the links, payments and postings.")

    def handle(self, *args: Any, **options: Any) -> None:
        summary = legacy_reconcile(execute=options["execute"])
        if not summary.executed or options["verbosity"] >= 2:
            self.stdout.write("\n".join(summary.actions))
        self.stdout.write("\n".join(summary_lines(summary)))
