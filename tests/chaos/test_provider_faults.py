"""The provider misbehaves under the real stack: timeouts, a storm of 5xx, a provider down (its circuit opens;
a payment falls back to another provider only when the first is known not to have taken it, and nothing is
ever re-sent under a new key), and webhooks duplicated, reordered, delayed past the poller, dropped for good
and forged. Then the beat jobs run until quiet and the bank invariant (tests.chaos.invariants) must hold."""

from __future__ import annotations

import json
import time
import uuid

import httpx
import pytest

from providers.models import MoneyMovement, Payment, PaymentAttempt, WebhookEvent
from tests.chaos import results, world
from tests.chaos.invariants import bank_report
from tests.escrow.factories_deals import UserFactory, held_deal, overdue, seller

pytestmark = [pytest.mark.chaos]

Status = MoneyMovement.Status


def _check(scenario: str, fault: str, tried: int, moved_before: int) -> None:
    report = bank_report(settled=True)
    results.record(scenario, fault, tried=tried, moved=world.succeeded() - moved_before, report=report)
    assert not report.problems, "bank invariant broken:\n" + "\n".join(report.problems)


def _no_attempt_after_unknown(payments) -> None:
    """Fallback only where allowed: an attempt whose outcome was ever unknown is its payment's last."""
    for payment in payments:
        attempts = list(PaymentAttempt.objects.filter(payment=payment).order_by("id"))
        keys = [f"{a.idempotency_key}" for a in attempts]
        unknown = set(MoneyMovement.objects.filter(key__in=keys, was_unknown=True).values_list("key", flat=True))
        for attempt in attempts[:-1]:
            assert attempt.idempotency_key not in unknown, f"{payment.reference} fell back after an unknown outcome"


@pytest.mark.parametrize("kind", ("timeout", "applied_then_timeout", "reset"))
def test_provider_timeouts(on_stack, tasks, kind):
    api, before = world.api_client(on_stack), world.succeeded()
    for _ in range(3):
        world.sandbox_fault(on_stack, "stripe.payment_intents.create", kind)
        assert api.pay(3_100).status_code == 201
    world.settle(on_stack, tasks)
    payments = Payment.objects.filter(user=api.user)
    assert set(payments.values_list("status", flat=True)) == {Payment.Status.SUCCEEDED}
    _no_attempt_after_unknown(payments)
    _check("provider timeouts", kind, 3, before)


def test_a_5xx_storm_opens_the_circuit_and_nothing_is_sent_again_under_a_new_key(on_stack, tasks):
    api, before = world.api_client(on_stack), world.succeeded()
    world.sandbox_fault(on_stack, "stripe.*", "error", times=None, status=503)
    answers = [api.pay(4_200).status_code for _ in range(8)]
    health = httpx.get(f"{on_stack.web_url}/api/health/payments", timeout=10).json()
    world.sandbox_clear(on_stack)
    assert 503 in answers, answers  # the circuit opened: refused before sending
    assert health.get("status") in ("DEGRADED", "UNHEALTHY"), health
    time.sleep(2.5)  # the breaker's backoff (PROVIDER_BREAKER_MAX_BACKOFF_SECONDS)
    world.settle(on_stack, tasks)
    payments = Payment.objects.filter(user=api.user)
    _no_attempt_after_unknown(payments)
    for payment in payments:
        assert PaymentAttempt.objects.filter(payment=payment, provider="stripe").count() == 1
    _check("5xx storm", "503 on every Stripe call", len(answers), before)


def test_a_provider_down_falls_back_only_when_known_not_done(on_stack, tasks):
    """Stripe resets every connection: the first payments are unknown and stay at Stripe; once its circuit
    is open, PHP payments preferring Stripe go to the next provider (a wallet, waiting for the customer)."""
    api, before = world.api_client(on_stack), world.succeeded()
    world.sandbox_fault(on_stack, "stripe.*", "reset", times=None)
    choice = {"currency": "PHP", "preferred_provider": "stripe", "preferred_method": "card"}
    answers = [api.post("/api/v1/payments/", {"amount_minor": 50_000, **choice}, uuid.uuid4().hex) for _ in range(8)]
    world.sandbox_clear(on_stack)
    assert all(answer.status_code == 201 for answer in answers), [a.text for a in answers]
    payments = Payment.objects.filter(user=api.user)
    assert payments.exclude(provider="stripe").exists(), "nothing fell back once the circuit was open"
    _no_attempt_after_unknown(payments)
    for payment in payments.exclude(provider="stripe"):
        _authorize_wallet(on_stack, payment)
    time.sleep(2.5)
    world.settle(on_stack, tasks, seconds=90)
    _no_attempt_after_unknown(payments)
    assert set(payments.values_list("status", flat=True)) <= {Payment.Status.SUCCEEDED, Payment.Status.FAILED}
    _check("provider down", "every Stripe connection reset", len(answers), before)


def _authorize_wallet(stack, payment: Payment) -> None:
    """The customer completes the wallet payment at GCash (a PayMongo source) or Maya."""
    payment.refresh_from_db()
    if payment.provider == "gcash":
        world.sandbox_call(stack, "POST", f"/paymongo/_simulate/sources/{payment.provider_reference}/authorize", {})
    elif payment.provider == "maya":
        world.sandbox_call(stack, "POST", f"/maya/_simulate/payments/{payment.provider_reference}/succeed", {})


WEATHER = {
    "duplicated": {"duplicate": 1_000},
    "reordered": {"reorder": 2},
    "delayed past the poller": {"delay_ms": 6_000},
    "dropped for good": {"drop": 1_000},
}


@pytest.mark.parametrize("weather", WEATHER)
def test_webhooks_in_bad_weather(on_stack, tasks, weather):
    """Payments answered unknown (the provider did them) and escrow deals released, while Stripe's webhooks are
    duplicated, reordered, delayed until after the poller found out, or lost."""
    api, before = world.api_client(on_stack), world.succeeded()
    world.stripe_webhooks(on_stack, **WEATHER[weather])
    for _ in range(2):
        world.sandbox_fault(on_stack, "stripe.payment_intents.create", "applied_then_timeout")
        assert api.pay(2_900).status_code == 201
    account, buyer = seller(None), UserFactory()
    deals = [held_deal(buyer, account, amount_minor=3_300) for _ in range(2)]
    overdue(*deals)
    world.settle(on_stack, tasks)
    time.sleep(6.5 if "delayed" in weather else 0.5)  # the late webhooks arrive after the poller resolved all
    world.stripe_webhooks(on_stack)
    world.settle(on_stack, tasks)
    assert set(Payment.objects.filter(user=api.user).values_list("status", flat=True)) == {Payment.Status.SUCCEEDED}
    _check("webhooks", weather, 4, before)


def test_forged_webhooks_change_nothing(on_stack, tasks):
    before, events = world.succeeded(), WebhookEvent.objects.filter(signature_valid=True).count()
    for provider, header in (("stripe", "Stripe-Signature"), ("gcash", "Paymongo-Signature")):
        body = json.dumps({"id": f"evt_{uuid.uuid4().hex}", "type": "payment_intent.succeeded",
                           "data": {"object": {"id": "pi_forged", "amount": 10**6}}})  # fmt: skip
        answer = httpx.post(
            f"{on_stack.web_url}/webhooks/{provider}/", content=body,
            headers={"Content-Type": "application/json", header: f"t={int(time.time())},v1={'0' * 64}"},
        )  # fmt: skip
        assert answer.status_code == 400, answer.text
    assert WebhookEvent.objects.filter(signature_valid=True).count() == events
    _check("webhooks", "forged", 2, before)
