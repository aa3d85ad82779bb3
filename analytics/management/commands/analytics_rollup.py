"""`manage.py analytics_rollup --since YYYY-MM-DD [--until YYYY-MM-DD] [--kind KIND ...]`: recompute the
summary tables for a range of UTC days (a backfill, or after a correction). Safe to rerun."""

from __future__ import annotations

from datetime import date
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from analytics.models import Kind
from analytics.services import rollup_days, utc_today


def _day(text: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError as error:
        raise CommandError(f"{text!r} is not a date: give it as YYYY-MM-DD") from error


class Command(BaseCommand):
    help = "Recompute the analytics summary tables for the UTC days from --since to --until (default today)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--since", required=True, help="First UTC day, YYYY-MM-DD.")
        parser.add_argument("--until", help="Last UTC day, YYYY-MM-DD (default: today).")
        parser.add_argument("--kind", action="append", choices=Kind.values, help="Only this kind (repeatable).")

    def handle(self, *args: Any, **options: Any) -> None:
        first = _day(options["since"])
        last = _day(options["until"]) if options["until"] else utc_today()
        if last < first:
            raise CommandError(f"--until {last} is before --since {first}")
        result = rollup_days(first=first, last=last, kinds=options["kind"])
        self.stdout.write(
            f"analytics rollup {first}..{last}: {result.status_rows} status rows, {result.reason_rows} reason rows "
            f"written, {result.deleted_rows} stale rows deleted"
        )
