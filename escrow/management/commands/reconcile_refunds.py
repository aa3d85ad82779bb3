"""`manage.py reconcile_refunds --days 30 --dry-run|--execute`: give back money that failed purchases kept.

Finds every failed, cancelled or timed-out purchase of the window whose money is not known to be back (an
authorization not voided or in doubt, a capture not refunded in full), prints what is owed by currency and
by buyer, and with --execute finishes each through the purchase services, under the same deterministic
keys: a second run finds nothing left and moves nothing.
"""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from core.errors import AppError
from escrow.purchases import RefundsReconciliation, refunds_reconcile


def report_lines(report: RefundsReconciliation) -> list[str]:
    verb = "Fixed" if report.executed else "Dry run, nothing sent or written; would fix"
    lines = [f"{verb}: {len(report.found)} purchase(s) since {report.since:%Y-%m-%d %H:%M} UTC owing money back."]
    for case in report.found:
        after = f" -> {case.status_after}" if report.executed else ""
        lines.append(
            f"  purchase {case.purchase_id} ({case.outcome}, buyer {case.buyer}): {case.owed.decimal_string()} "
            f"{case.owed.currency}, {case.problem}; {case.status}{after}"
        )
    totals = ", ".join(f"{m.decimal_string()} {m.currency}" for m in report.owed_by_currency().values())
    lines.append(f"Owed by currency: {totals or 'none'}")
    for buyer, amounts in report.owed_by_buyer().items():
        lines.append(f"  {buyer}: " + ", ".join(f"{m.decimal_string()} {m.currency}" for m in amounts))
    if report.executed:
        waiting = len(report.found) - report.settled
        lines.append(f"Settled now: {report.settled}; still waiting on the provider (sync retries): {waiting}")
    return lines


class Command(BaseCommand):
    help = "Find failed, cancelled or timed-out purchases whose money was not given back, and give it back."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--days", type=int, default=30, help="Purchases created in the last N days (30).")
        mode = parser.add_mutually_exclusive_group(required=True)
        mode.add_argument("--dry-run", action="store_true", help="Report only; call no provider, write nothing.")
        mode.add_argument("--execute", action="store_true", help="Void or refund each purchase found, once.")

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            report = refunds_reconcile(days=options["days"], execute=options["execute"])
        except AppError as error:
            raise CommandError(f"{error.user_message} {error.action_required}") from error
        self.stdout.write("\n".join(report_lines(report)))
