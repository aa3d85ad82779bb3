"""What the chaos run tried and what came of it, written to docs/chaos-results.md by `make test-chaos`
(CHAOS_RESULTS names the file; a run without it writes nothing, so one test run alone never rewrites it).

Each test calls `record(scenario, fault, ...)` with the figures of the bank invariant (tests.chaos.invariants):
money movements that succeeded, money lost (moved by the provider and never recorded, or left with nobody
to look at it) and doubled (moved or posted twice for one intent).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

from tests.chaos.invariants import BankReport


@dataclass
class Row:
    scenario: str
    fault: str
    tried: int = 0
    moved: int = 0
    lost: int = 0
    doubled: int = 0


ROWS: dict[tuple[str, str], Row] = {}
STARTED = time.monotonic()


def record(scenario: str, fault: str, *, tried: int = 1, moved: int = 0, report: BankReport | None = None) -> None:
    """`moved`: the money movements that succeeded in these tries; `report`: the bank invariant after them."""
    row = ROWS.setdefault((scenario, fault), Row(scenario, fault))
    row.tried += tried
    row.moved += moved
    if report is not None:
        row.lost += report.lost
        row.doubled += report.doubled


def table() -> str:
    lines = [
        "| scenario | fault | times tried | movements made | lost | doubled |",
        "|---|---|---|---|---|---|",
    ]
    for row in ROWS.values():
        lines.append(f"| {row.scenario} | {row.fault} | {row.tried} | {row.moved} | {row.lost} | {row.doubled} |")
    return "\n".join(lines)


def document() -> str:
    minutes = (time.monotonic() - STARTED) / 60
    return (
        "# Chaos results\n\n"
        "Written by `make test-chaos` (tests/chaos/); do not edit by hand. Each row is one fault as tried; "
        '"movements made" counts the money movements that succeeded, summed over the runs (in the stateful rows, '
        "those that succeeded within the faulted call itself: the rest finish when the sweepers run and are "
        'counted in "whole run, then settled"); "lost" and "doubled" count what the bank invariant '
        "(tests/chaos/invariants.py) found once the sweepers had run until quiet.\n\n"
        f"{table()}\n\n"
        f"Run time: {minutes:.1f} minutes.\n"
    )


def write_if_asked() -> None:
    target = os.environ.get("CHAOS_RESULTS", "")
    if target and ROWS:
        Path(target).write_text(document())
