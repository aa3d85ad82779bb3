"""What a domain supplies to the protocol: how to call, how to look up, and what each outcome posts.

A domain subclasses `Operation` once per kind of call (escrow capture, purchase refund, PayPal
batch...), gives it a unique `name`, and registers an instance at start-up (`operation_register`,
from its AppConfig.ready). The engine (providers.protocol.engine) does everything else.

The hooks run inside the engine's outcome transaction, with the movement row locked and already
moved to its new status, exactly once per movement: post ledger legs and move the domain row there.
A hook may record the next step's intent (`movement_record`) and return those movements; the engine
runs them once the outcome has committed.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta
from typing import ClassVar

from providers.base import Declined, LookupResult, Pending, ProviderResult, Succeeded
from providers.models import MoneyMovement

FollowUps = Sequence[MoneyMovement] | None

# How long each provider remembers an idempotency key (with a margin): a keyed re-send inside the
# window is answered with the first outcome; outside it the provider would move the money again.
KEY_WINDOWS = {
    "stripe": timedelta(hours=23),
    "paypal": timedelta(days=29),
    "gcash": timedelta(hours=23),
    "maya": timedelta(0),  # Maya does not replay a repeated request: always look it up
}


class Operation:
    name: ClassVar[str]  # "escrow.capture": unique; stored on every movement row
    provider: ClassVar[str]  # "stripe", "paypal", "maya", "gcash"; "" when each movement names its own
    method: ClassVar[str] = ""  # availability and breaker figures are kept per provider and method

    def key_window(self, movement: MoneyMovement) -> timedelta:
        """How long the movement's provider answers a keyed re-send with the first outcome."""
        return KEY_WINDOWS[movement.provider]

    def retry_safe(self, movement: MoneyMovement) -> bool:
        """May the engine's retry loop repeat the call at once? Only a keyed request the provider replays."""
        return self.key_window(movement) > timedelta(0)

    # --- calling (no transaction is open; never raise for a provider's answer)
    def send(self, movement: MoneyMovement) -> ProviderResult:
        """Make the call with `movement.key` as the idempotency key; the same request every time."""
        raise NotImplementedError

    def look_up(self, movement: MoneyMovement) -> LookupResult | None:
        """Find what the provider did, without moving money: its answer is authoritative.

        `Absent` means the provider has no such object (the request never took effect); `Unknown`
        means it could not say. The only decline a look-up gives is `providers.base.found_failed(...)`:
        the object exists in a failed state. Any other `Declined` from a look-up (a 429, a 4xx, not sent)
        is treated as Unknown by the engine. None: this operation has no look-up, so only a keyed re-send inside
        the provider's key window can find out, and only its positive answers count.
        """
        return None

    # --- recording (inside the outcome transaction, once)
    def on_succeeded(self, movement: MoneyMovement, result: Succeeded) -> FollowUps:
        return None

    def on_declined(self, movement: MoneyMovement, result: Declined) -> FollowUps:
        return None

    def on_waiting(self, movement: MoneyMovement, result: Pending) -> FollowUps:
        return None

    def on_unknown(self, movement: MoneyMovement, reason: str) -> None:
        return None

    # --- escalation, when the sync schedule has run out
    def escalation_action(self, movement: MoneyMovement) -> str:
        return (
            f"Look the {self.provider} object up by our key {movement.key} and settle it by hand; "
            "then use 'Sync now' on the money movement."
        )


_operations: dict[str, Operation] = {}


def operation_register(operation: Operation) -> Operation:
    existing = _operations.get(operation.name)
    if existing is not None and type(existing) is not type(operation):
        raise ValueError(f"operation {operation.name!r} is already registered by {type(existing).__name__}")
    _operations[operation.name] = operation
    return operation


def operation_get(name: str) -> Operation:
    try:
        return _operations[name]
    except KeyError:
        raise LookupError(f"no money-moving operation {name!r} is registered") from None


def operations_registered() -> dict[str, Operation]:
    return dict(_operations)
