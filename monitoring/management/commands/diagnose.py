"""`manage.py diagnose [--json] [--grace-minutes N]`: health and stuck work; exit 0 fine, 1 needs a person, 2 no DB.

What each check looks at and when it fails: monitoring/diagnosis.py. What to do: docs/runbook.md.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from datetime import timedelta
from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from monitoring.diagnosis import DEFAULT_GRACE, FAIL, WARN, Diagnosis, diagnose

LABELS = {"ok": "ok", WARN: "WARN", FAIL: "FAIL"}


class Command(BaseCommand):
    help = (
        "Health and stuck work: database, Redis, circuits, open alerts, money movements in flight or unknown, "
        "payout batches, stale locks, reconciliation issues, escrow deals past deadline. Exits 0 when nothing "
        "needs a person, 1 when something does, 2 when the database cannot be reached."
    )
    requires_system_checks: list[str] = []  # must answer even when the project is half broken
    requires_migrations_checks = False

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--json", action="store_true", help="One JSON document instead of text.")
        parser.add_argument(
            "--grace-minutes",
            type=int,
            default=int(DEFAULT_GRACE.total_seconds() // 60),
            help="How late a scheduled sync or deadline may be before it counts as stuck (default: %(default)s).",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        result = diagnose(grace=timedelta(minutes=max(options["grace_minutes"], 0)))
        if options["json"]:
            self.stdout.write(json.dumps(_document(result), default=str, indent=2))
        else:
            self._print(result)
        if result.exit_code:
            raise SystemExit(result.exit_code)

    def _print(self, result: Diagnosis) -> None:
        self.stdout.write(f"Back office health at {result.checked_at:%Y-%m-%d %H:%M:%S} UTC\n")
        width = max(len(check.name) for check in result.checks)
        for check in result.checks:
            label = LABELS.get(check.status, check.status)
            style = {FAIL: self.style.ERROR, WARN: self.style.WARNING}.get(check.status, self.style.SUCCESS)
            self.stdout.write(f"  {style(f'{label:<4}')}  {check.name:<{width}}  {check.summary}")
        self.stdout.write("")
        if result.exit_code == 2:
            self.stdout.write(self.style.ERROR("The database is unreachable: nothing else can be judged."))
        elif result.failing:
            failing = ", ".join(result.failing)
            self.stdout.write(self.style.ERROR(f"Needs a person: {failing}. What to do: docs/runbook.md."))
        else:
            self.stdout.write(self.style.SUCCESS("Nothing needs a person."))


def _document(result: Diagnosis) -> dict[str, Any]:
    return {
        "checked_at": result.checked_at.isoformat(),
        "exit_code": result.exit_code,
        "needs_a_person": result.failing,
        "checks": [asdict(check) for check in result.checks],
    }
