"""The Stripe sandbox's state and values: test cards, idempotency records, `StripeState` (what
`state_of(sandbox)` returns), `Refusal` (an error answer shaped like Stripe's), `Call` (one request to an
action), and the id and clock helpers."""

from __future__ import annotations

import copy
import secrets
import string
import time
from dataclasses import dataclass, field
from typing import Any

from providers.sandbox.server import Sandbox, SandboxResponse

Obj = dict[str, Any]
IDEMPOTENCY_WINDOW_SECONDS = 24 * 3600
_ID_ALPHABET = string.ascii_letters + string.digits


@dataclass(frozen=True)
class SandboxCard:
    brand: str
    last4: str
    code: str = ""  # set when the issuer refuses: card_declined, expired_card, ...
    decline_code: str = ""
    message: str = ""

    @property
    def declined(self) -> bool:
        return bool(self.code)


_DECLINED = "Your card was declined."
TEST_PAYMENT_METHODS: dict[str, SandboxCard] = {
    "pm_card_visa": SandboxCard("visa", "4242"),
    "pm_card_mastercard": SandboxCard("mastercard", "4444"),
    "pm_card_amex": SandboxCard("amex", "8431"),
    "pm_card_chargeDeclined": SandboxCard("visa", "0002", "card_declined", "generic_decline", _DECLINED),
    "pm_card_chargeDeclinedInsufficientFunds": SandboxCard(
        "visa", "9995", "card_declined", "insufficient_funds", "Your card has insufficient funds."
    ),
    "pm_card_chargeDeclinedFraudulent": SandboxCard("visa", "0019", "card_declined", "fraudulent", _DECLINED),
    "pm_card_chargeDeclinedExpiredCard": SandboxCard("visa", "0069", "expired_card", "", "Your card has expired."),
    "pm_card_chargeDeclinedProcessingError": SandboxCard(
        "visa",
        "0119",
        "processing_error",
        "",
        "An error occurred while processing your card. Try again in a little bit.",
    ),
}


@dataclass
class IdempotencyRecord:
    fingerprint: tuple[str, str, tuple[tuple[str, str], ...]]
    started_at: float
    response: SandboxResponse | None = None  # None while the first request is running


@dataclass
class StripeState:
    payment_intents: dict[str, Obj] = field(default_factory=dict)
    charges: dict[str, Obj] = field(default_factory=dict)
    refunds: dict[str, Obj] = field(default_factory=dict)
    transfers: dict[str, Obj] = field(default_factory=dict)
    reversals: dict[str, Obj] = field(default_factory=dict)
    accounts: dict[str, Obj] = field(default_factory=dict)  # connected accounts; unknown acct_ ids accept transfers
    payment_methods: dict[str, SandboxCard] = field(default_factory=dict)
    idempotency: dict[tuple[str, str], IdempotencyRecord] = field(default_factory=dict)
    events: list[Obj] = field(default_factory=list)  # every event, delivered or not
    balance_transactions: dict[str, Obj] = field(default_factory=dict)  # txn_...: every movement of money
    searchable_at: dict[str, float] = field(default_factory=dict)  # PaymentIntent id -> monotonic time
    processing_delay_seconds: float = 0.0
    idempotency_window_seconds: float = IDEMPOTENCY_WINDOW_SECONDS
    search_lag_seconds: float = 0.0

    def forget_idempotency_keys(self) -> None:
        self.idempotency.clear()

    def reset(self) -> None:
        for table in (self.payment_intents, self.charges, self.refunds, self.transfers, self.reversals):
            table.clear()
        self.accounts.clear()
        self.payment_methods.clear()
        self.idempotency.clear()
        self.events.clear()
        self.balance_transactions.clear()
        self.searchable_at.clear()
        self.processing_delay_seconds = 0.0
        self.idempotency_window_seconds = IDEMPOTENCY_WINDOW_SECONDS
        self.search_lag_seconds = 0.0


class Refusal(Exception):
    """An error answer shaped like Stripe's; `stored` says whether the idempotency layer keeps it."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type_: str = "invalid_request_error",
        code: str = "",
        param: str = "",
        stored: bool = True,
        **extra: Any,
    ) -> None:
        super().__init__(message)
        self.status, self.stored = status, stored
        self.error: Obj = {"type": type_, "message": message}
        if code:
            self.error.update(code=code, doc_url=f"https://stripe.com/docs/error-codes/{code.replace('_', '-')}")
        if param:
            self.error["param"] = param
        self.error.update(extra)

    def response(self) -> SandboxResponse:
        return SandboxResponse(self.status, {"error": copy.deepcopy(self.error)})


@dataclass
class Call:
    params: dict[str, str]
    object_id: str
    request_id: str
    idempotency_key: str
    api_version: str
    events: list[tuple[str, Obj]] = field(default_factory=list)

    def emit(self, event_type: str, obj: Obj) -> None:
        self.events.append((event_type, copy.deepcopy(obj)))


def state_of(sandbox: Sandbox) -> StripeState:
    state: StripeState = sandbox.stripe  # type: ignore[attr-defined]
    return state


def new_id(prefix: str) -> str:
    return f"{prefix}_{''.join(secrets.choice(_ID_ALPHABET) for _ in range(24))}"


def _now() -> int:
    return int(time.time())
