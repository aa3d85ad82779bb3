"""The demo's e-wallet payments: Maya and GCash through the orchestrator (providers.payments), routed by
priority (GCash, then Maya, then card for PHP), each finished by the customer at the sandbox's checkout page
and recorded from the provider's webhook, as in production.

| payment  | route                                   | the customer        | final state                    |
|----------|-----------------------------------------|---------------------|--------------------------------|
| gcash    | GCash (first by priority)               | authorizes          | succeeded via GCash (charged)  |
| maya     | Maya (the customer's preference)        | pays                | succeeded via Maya             |
| fallback | GCash refuses the source: falls to Maya | pays                | succeeded via Maya (2 attempts)|
| expired  | Maya (preference)                       | walks away          | failed (PAYMENT_EXPIRED)       |
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import httpx
from django.contrib.auth import get_user_model
from django.core.management.base import CommandError

from core.money import Money
from monitoring.demo.webhooks import WebhookReceiver
from providers.models import Payment
from providers.payments import payment_initiate
from providers.routing import Choice
from providers.sandbox.server import Fault, Sandbox

CURRENCY = "PHP"
MAYA = Choice("maya", "maya_wallet")
# What PayMongo answers when it will not open a GCash source: known not taken, so routing may fall back.
GCASH_REFUSAL = {"errors": [{"code": "resource_failed_state", "detail": "GCash is not available right now."}]}


@dataclass(frozen=True)
class Planned:
    name: str
    amount_minor: int
    preferred: Choice | None  # the customer's preferred method, else the routing priority
    customer: str  # what the customer does at the checkout page: a sandbox action
    status: str  # the payment's final status
    attempts: list[tuple[str, str]]  # (provider, attempt status), in order
    gcash_refuses: bool = False  # PayMongo refuses to open the GCash source (a 400: nothing was created)


SUCCEEDED, FAILED = Payment.Status.SUCCEEDED, Payment.Status.FAILED
PLAN = [
    Planned("gcash", 150_000, None, "authorize", SUCCEEDED, [("gcash", "succeeded")]),
    Planned("maya", 240_000, MAYA, "succeed", SUCCEEDED, [("maya", "succeeded")]),
    Planned(
        "fallback",
        320_000,
        None,
        "succeed",
        SUCCEEDED,
        [("gcash", "declined"), ("maya", "succeeded")],
        gcash_refuses=True,
    ),
    Planned("expired", 90_000, MAYA, "expire", FAILED, [("maya", "declined")]),
]


def run_wallet_payments(
    *, run_id: str, buyer_username: str, sandbox: Sandbox, webhooks: WebhookReceiver, say: Callable[[str], None]
) -> list[Payment]:
    buyer = get_user_model().objects.get(username=buyer_username)
    payments = []
    for plan in PLAN:
        if plan.gcash_refuses:
            sandbox.add_fault(Fault(operation="paymongo.sources.create", kind="error", status=400, body=GCASH_REFUSAL))
        payment = payment_initiate(
            user=buyer,
            amount=Money(plan.amount_minor, CURRENCY),
            client_key=f"demo:{run_id}:{plan.name}",
            preferred=plan.preferred,
        )
        _customer_acts(sandbox, payment, plan.customer)
        webhooks.settle()
        payment.refresh_from_db()
        attempts = list(payment.attempts.order_by("pk").values_list("provider", "status"))
        say(
            f"{plan.name} payment {payment.reference} ({Money(payment.amount_minor, CURRENCY)}): {payment.status} "
            f"via {payment.provider}; attempts " + ", ".join(f"{provider} {status}" for provider, status in attempts)
        )
        if (payment.status, attempts) != (plan.status, plan.attempts):
            raise CommandError(f"the {plan.name} payment ended {payment.status} after {attempts}, not as planned")
        payments.append(payment)
    return payments


def _customer_acts(sandbox: Sandbox, payment: Payment, action: str) -> None:
    """The customer at the provider's checkout page (the sandbox's control routes)."""
    if payment.status != Payment.Status.REQUIRES_ACTION:
        raise CommandError(f"payment {payment.reference} is {payment.status}, not waiting for the customer")
    if payment.provider == "gcash":
        path = f"/paymongo/_simulate/sources/{payment.provider_reference}/{action}"
    else:
        path = f"/maya/_simulate/payments/{payment.provider_reference}/{action}"
    httpx.post(f"{sandbox.url}{path}", json={}, timeout=10).raise_for_status()
