"""The fault sequences of issue 9, one table. Each is what happens around one operation's first send:

- `applied_then_timeout:<refusal>`: the provider moves the money but the call times out; on the next look
  (the sweeper's look-up, or a re-send) the provider refuses, in each way of class 1 of issue 9: 429, 500,
  503, circuit open, connection refused, a decline, "already refunded", an idempotency error. Then the
  refusal is lifted and the sweepers run.
- `forgotten_key`: applied then timed out, and the provider's key window passes (it forgets the key).
- `died_before_commit`: the provider answered, the process died before our outcome was recorded.
- `webhook_before_return`: the provider's webhooks are delivered and processed while the call is in flight.
- `webhooks_dropped` / `webhooks_duplicated`: applied then timed out; every webhook lost / sent twice.

A sequence has three moments: `arm` (before the triggering call), `after` (once it returned: the refused
look, the forgotten key...) and then the sweepers run until quiet (the test does that).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, ExitStack, contextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from providers.protocol.operations import KEY_WINDOWS
from providers.sandbox.server import Fault
from tests.protocol import harness
from tests.protocol.harness import Case

if TYPE_CHECKING:
    from tests.protocol.operations import OperationRow

WEBHOOK_FAULTS = 1_000  # "every" webhook of the case


# --- refusals, shaped as each provider answers them ------------------------------------------------------


def _stripe(status: int, type_: str, code: str, message: str, **extra: str) -> dict[str, Any]:
    return {"status": status, "body": {"error": {"type": type_, "code": code, "message": message, **extra}}}


def _paypal(status: int, name: str, message: str) -> dict[str, Any]:
    return {"status": status, "body": {"name": name, "message": message, "debug_id": "f00dfeed", "details": []}}


def _paymongo(status: int, code: str, detail: str) -> dict[str, Any]:
    return {"status": status, "body": {"errors": [{"code": code, "detail": detail}]}}


REFUSALS: dict[str, dict[str, dict[str, Any]]] = {
    "http_429": {
        "stripe": {"headers": {"Retry-After": "0"}, **_stripe(429, "invalid_request_error", "rate_limit", "Too many")},
        "paypal": {"headers": {"Retry-After": "0"}, **_paypal(429, "RATE_LIMIT_REACHED", "Too many requests")},
        "paymongo": _paymongo(429, "rate_limit_exceeded", "Too many requests"),
    },
    "http_500": {
        "stripe": _stripe(500, "api_error", "", "An unknown error occurred"),
        "paypal": _paypal(500, "INTERNAL_SERVER_ERROR", "An internal server error occurred."),
        "paymongo": _paymongo(500, "internal_server_error", "Something went wrong"),
    },
    "http_503": {
        "stripe": _stripe(503, "api_error", "", "Service unavailable"),
        "paypal": _paypal(503, "SERVICE_UNAVAILABLE", "Service unavailable."),
        "paymongo": _paymongo(503, "service_unavailable", "Service unavailable"),
    },
    "decline": {
        "stripe": _stripe(
            402, "card_error", "card_declined", "Your card was declined.", decline_code="generic_decline"
        ),
        "paypal": _paypal(422, "INSUFFICIENT_FUNDS", "Sender does not have sufficient funds."),
        "paymongo": _paymongo(400, "payment_declined", "The payment was declined by the issuer."),
    },
    "already_refunded": {
        "stripe": _stripe(400, "invalid_request_error", "charge_already_refunded", "Charge has already been refunded."),
        "paypal": _paypal(400, "ITEM_ALREADY_CANCELLED", "Requested item is already cancelled."),
        "paymongo": _paymongo(400, "resource_already_refunded", "The payment has already been fully refunded."),
    },
    "idempotency_error": {
        "stripe": _stripe(
            400, "idempotency_error", "idempotency_key_in_use", "Keys for idempotent requests can only be used once."
        ),
        "paypal": _paypal(400, "USER_BUSINESS_ERROR", "Batch with given sender_batch_id already exists"),
        "paymongo": _paymongo(400, "idempotency_key_conflict", "The idempotency key was used with other parameters."),
    },
}


@contextmanager
def sandbox_refuses(case: Case, row: OperationRow, kind: str) -> Iterator[None]:
    """Every call to the provider is answered with the refusal while inside."""
    answer = REFUSALS[kind][row.sandbox_provider]
    case.sandbox.add_fault(Fault(operation=f"{row.sandbox_provider}.*", kind="error", times=None, **answer))
    try:
        yield
    finally:
        case.sandbox.clear_faults()


def refusal(kind: str) -> Callable[[Case, OperationRow], AbstractContextManager[None]]:
    def refuse(case: Case, row: OperationRow) -> AbstractContextManager[None]:
        if kind == "circuit_open":
            return harness.circuit_open(row.provider)
        if kind == "connection_refused":
            return harness.connections_refused()
        return sandbox_refuses(case, row, kind)

    return refuse


REFUSAL_KINDS = (
    "http_429",
    "http_500",
    "http_503",
    "circuit_open",
    "connection_refused",
    "decline",
    "already_refunded",
    "idempotency_error",
)


# --- the sequences -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FaultSequence:
    name: str
    applied_then_timeout: bool = True  # the first send moves the money and times out
    refuse: Callable[[Case, OperationRow], AbstractContextManager[None]] | None = None  # on the next look
    forget_keys: bool = False  # the provider forgets the key (its window passed) after the first send
    dies_before_commit: bool = False
    webhooks: dict[str, int] | None = None  # None: nobody listens; else delivered to us with these faults
    webhook_before_return: bool = False
    notes: str = field(default="", compare=False)

    @property
    def needs_webhooks(self) -> bool:
        return self.webhooks is not None

    def not_applicable(self, row: OperationRow) -> str:
        """Why this sequence cannot apply to the operation ('' when it does)."""
        if self.needs_webhooks and not row.webhook_events:
            return f"{row.provider} sends no webhook for {row.operation}"
        if self.webhook_before_return and not row.webhooks_in_flight:
            return f"{row.provider} sends the webhooks of {row.operation} only later, never while the call is in flight"
        return ""

    def arm(self, case: Case, row: OperationRow) -> AbstractContextManager[Any]:
        """Before the triggering call; the context stays open while it runs."""
        stack = ExitStack()
        if self.webhooks is not None:
            case.webhooks_to_us(row.sandbox_provider, **self.webhooks)
        if self.applied_then_timeout:
            case.sandbox.add_fault(Fault(operation=row.send_glob, kind="applied_then_timeout", times=1))
        if self.dies_before_commit:
            stack.enter_context(harness.dies_before_recording(row.operation, case.data.setdefault("died", [])))
        if self.webhook_before_return:
            delivered = case.data.setdefault("early_webhooks", [])
            stack.enter_context(harness.webhooks_before_return(row.operation, case.sandbox, delivered))
        return stack

    def took_effect(self, case: Case, row: OperationRow) -> str:
        """Why the fault did not happen as meant ('' when it did): a case whose fault missed proves nothing."""
        movements = harness.movements_of(row.operation)
        if self.applied_then_timeout and not any(m.was_unknown for m in movements):
            return f"the first send of {row.operation} was never unknown: {[(m.key, m.status) for m in movements]}"
        if self.dies_before_commit and not case.data.get("died"):
            return f"no outcome of {row.operation} was about to be recorded"
        if self.webhook_before_return and not sum(case.data.get("early_webhooks", [])):
            return f"no webhook arrived while {row.operation} was in flight"
        return ""

    def after(self, case: Case, row: OperationRow) -> None:
        """Once the triggering call returned (or the process died): the next look, under the fault."""
        if self.applied_then_timeout or self.dies_before_commit:  # the provider did it, however slow it is here
            harness.wait_until_applied(case, row.operation, row.sandbox_movements)
        harness.deliver_webhooks(case.sandbox)
        if self.forget_keys:
            case.sandbox.forget_idempotency_keys(row.sandbox_provider)
            harness.age_first_send(row.operation, KEY_WINDOWS[row.provider] + timedelta(hours=1))
        if self.refuse is not None:
            with self.refuse(case, row):
                harness.sync_once(row.operation)
                harness.deliver_webhooks(case.sandbox)


FAULT_SEQUENCES: tuple[FaultSequence, ...] = (
    *(FaultSequence(name=f"applied_then_timeout:{kind}", refuse=refusal(kind)) for kind in REFUSAL_KINDS),
    FaultSequence(name="forgotten_key", forget_keys=True),
    FaultSequence(name="died_before_commit", applied_then_timeout=False, dies_before_commit=True),
    FaultSequence(name="webhook_before_return", applied_then_timeout=False, webhooks={}, webhook_before_return=True),
    FaultSequence(name="webhooks_dropped", webhooks={"drop": WEBHOOK_FAULTS}),
    FaultSequence(name="webhooks_duplicated", webhooks={"duplicate": WEBHOOK_FAULTS}),
)
