"""`manage.py import_legacy_payouts FILE.csv`: store a PayPal payouts export once, flagging what does not parse."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from core.errors import AppError
from core.money import Money
from payouts.legacy import ImportSummary, legacy_import


def _counts(title: str, counts: dict[str, int]) -> str:
    return f"{title}: " + (", ".join(f"{key or '(none)'} {n}" for key, n in sorted(counts.items())) or "none")


def summary_lines(summary: ImportSummary) -> list[str]:
    paid = {
        currency: Money(minor, currency).decimal_string() for currency, minor in summary.paid_minor_by_currency.items()
    }
    return [
        f"Imported {summary.source_file}: {summary.rows_read} row(s) read, {summary.created} new, "
        f"{summary.already_imported} already imported ({summary.changed_since_import} changed since: kept as first "
        "imported).",
        _counts("New rows by format", summary.by_format),
        _counts("New rows by review status", summary.by_review_status),
        _counts("New rows by PayPal status", summary.by_paypal_status),
        f"Bad amounts (flagged for review): {summary.bad_amounts}",
        "Paid (SUCCESS) amounts: " + (", ".join(f"{amount} {cur}" for cur, amount in sorted(paid.items())) or "none"),
    ]


class Command(BaseCommand):
    help = "Import legacy PayPal payouts from a CSV export; re-importing the same file adds nothing."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("csv_file", help="PayPal payouts export with sender_item_id, amount, currency, status.")

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            summary = legacy_import(options["csv_file"])
        except OSError as error:
            raise CommandError(f"cannot read {options['csv_file']}: {error}") from error
        except AppError as error:
            raise CommandError(f"{error.message}. {error.action_required}") from error
        self.stdout.write("\n".join(summary_lines(summary)))
