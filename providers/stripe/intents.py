"""What a PaymentIntent's state says about one of our calls on it: a hold, a capture or a void.

Escrow deals and purchases both hold money on a card; the rule for reading Stripe's answer is written once,
here. A read for a step answers: Succeeded (the step is done, by us or anyone), `Absent` (it never took
effect: the protocol may send it under the same key), `found_failed` (it can never take effect now), or
Unknown (anything else, including a read that failed: that says nothing about the money).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from providers.base import Absent, Declined, LookupResult, Pending, ProviderResult, Succeeded, Unknown, found_failed
from providers.stripe.client import stripe_client

HELD = frozenset({"requires_capture", "succeeded"})  # authorized, or captured at once


def as_hold(found: LookupResult) -> LookupResult:
    """A PaymentIntent as a hold: authorized or captured = done; a refused card or a canceled intent = found
    failed (known not held); waiting on the buyer (3-D Secure) = pending."""
    if isinstance(found, Pending) and found.status == "requires_payment_method":
        error: dict[str, Any] = found.raw.get("last_payment_error") or {}
        return found_failed(str(error.get("message") or f"the card was declined on {found.reference}"), found.raw)
    if isinstance(found, Succeeded) and found.status not in HELD:
        return found_failed(f"PaymentIntent {found.reference} is {found.status}", found.raw)
    return found


def find_hold(*, idempotency_key: str, first_attempt_at: datetime | None) -> LookupResult:
    """The look-up of a hold (a PaymentIntent we created under `idempotency_key`), read as a hold. Stripe's
    search lags new objects, so an empty answer soon after the first send is unknown, not absent."""
    return as_hold(
        stripe_client().find_payment_intent(idempotency_key=idempotency_key, first_attempt_at=first_attempt_at)
    )


@dataclass(frozen=True)
class IntentStep:
    """A step on an authorized PaymentIntent: the status that shows it done, the statuses that show it not
    done yet, and the status that shows it can never be done."""

    name: str
    done: str
    not_yet: frozenset[str]
    never: str


CAPTURE = IntentStep("capture", done="succeeded", not_yet=frozenset({"requires_capture"}), never="canceled")
VOID = IntentStep(
    "void",
    done="canceled",
    not_yet=frozenset({"requires_capture", "requires_payment_method", "requires_confirmation", "requires_action"}),
    never="succeeded",
)


def step_state(found: ProviderResult | LookupResult, step: IntentStep) -> LookupResult:
    """A retrieved PaymentIntent read for one step."""
    if isinstance(found, Succeeded | Pending):
        if found.status == step.done:
            return Succeeded(reference=found.reference, status=found.status, raw=found.raw)
        if found.status in step.not_yet:
            return Absent(reason=f"PaymentIntent {found.reference} is {found.status}: no {step.name} yet")
        if found.status == step.never:
            return found_failed(
                f"PaymentIntent {found.reference} is {found.status}: no {step.name} possible", found.raw
            )
        return Unknown(reason=f"PaymentIntent {found.reference} is {found.status}")
    if isinstance(found, Declined):  # the read was refused: that says nothing about the step
        return Unknown(reason=f"reading the PaymentIntent failed: {found.reason}")
    return found


def step_answer(answer: ProviderResult, step: IntentStep, read: Callable[[], ProviderResult]) -> ProviderResult:
    """The answer to a capture or void call. A refusal is checked against the PaymentIntent (`read`): done by
    anyone, or never possible, is what it says; otherwise the refusal stands (known not done)."""
    if isinstance(answer, Declined) and not answer.retryable:
        found = step_state(read(), step)
        return found if isinstance(found, Succeeded | Declined) else answer
    if isinstance(answer, Succeeded | Pending):
        state = step_state(answer, step)
        return (
            state if isinstance(state, Succeeded | Declined) else Unknown(reason=f"the {step.name} answered {answer}")
        )
    return answer


def intent_status(result: Declined) -> str:
    """The PaymentIntent's status a `found_failed` carries, when it carries the PaymentIntent."""
    return str(result.raw.get("status", "")) if result.raw.get("object") == "payment_intent" else ""
