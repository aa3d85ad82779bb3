"""A pause at one step of the protocol, for the chaos tests (tests/chaos/) only; off unless PROTOCOL_PAUSE_FILE
is set, and then it costs one failed file read per step.

The file, when it exists, holds `<step> <operation>`, e.g. `after_send escrow.capture`. The first process
that reaches that step of a movement of that operation renames the file to `<file>.paused` (so one process
pauses per arming), writes `<pid> <step> <movement key>` into it and sleeps PROTOCOL_PAUSE_SECONDS: the test
kills it there, as a machine dying at that moment would. Steps (engine `_claim_and_go`):
- `before_send`: the movement is claimed and nothing was sent;
- `after_send`: the provider answered (and may have moved the money); nothing is recorded;
- `after_record`: the outcome is committed; follow-ups not sent, the task not acknowledged.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from django.conf import settings

from providers.models import MoneyMovement

STEPS = ("before_send", "after_send", "after_record")


def protocol_pause(step: str, movement: MoneyMovement) -> None:
    armed_path = getattr(settings, "PROTOCOL_PAUSE_FILE", "")
    if not armed_path:
        return
    try:
        armed = Path(armed_path).read_text().split()
    except OSError:
        return
    if armed != [step, movement.operation]:
        return
    paused = Path(f"{armed_path}.paused")
    try:
        os.rename(armed_path, paused)  # atomic: exactly one process wins the arming
    except OSError:
        return
    paused.write_text(f"{os.getpid()} {step} {movement.key}\n")
    time.sleep(float(settings.PROTOCOL_PAUSE_SECONDS))
