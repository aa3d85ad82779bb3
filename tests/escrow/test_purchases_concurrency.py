"""Purchases under real concurrency: threads against PostgreSQL (transaction=True) and the sandbox over HTTP."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import pytest
from django.db import connections
from django.utils import timezone

from core.errors import AppError, InvalidRequest
from core.money import Money
from escrow.models import Purchase, PurchaseRefund
from escrow.purchases import (
    purchase_cancel,
    purchase_create,
    purchase_refund,
    purchase_report_delivery,
    purchase_time_out,
)
from ledger.integrity import ledger_integrity_report
from ledger.models import Account
from ledger.selectors import account_balance
from providers.sandbox import stripe as stripe_sandbox
from tests.escrow.factories_purchases import buyer_create, deliverer_create, finance_create, service_create

CLEARING, REVENUE = "provider:stripe:clearing:USD", "platform:revenue:services:USD"
FEES = "platform:provider-fees:stripe:USD"
FEE = 320  # Stripe's USD card fee on the 10,000 price, by the seeded rule: 2.9% = 290, plus 30


@pytest.fixture(autouse=True)
def _isolated(settings):
    settings.PROVIDER_STATE_KEY_PREFIX = f"test:purchases-race:{uuid.uuid4().hex}"
    settings.PROVIDER_RETRY_ATTEMPTS = 1


def posted(code: str) -> int:
    account = Account.objects.filter(code=code).first()
    return account_balance(account).posted.minor if account else 0


def in_threads(calls: list[Callable[[], str]]) -> list[str]:
    barrier = threading.Barrier(len(calls))

    def run(call: Callable[[], str]) -> str:
        barrier.wait()
        try:
            return call()
        except AppError as error:
            return error.code
        finally:
            connections.close_all()

    with ThreadPoolExecutor(max_workers=len(calls)) as pool:
        return list(pool.map(run, calls))


def buy(buyer, key: str) -> Purchase:
    return purchase_create(
        buyer=buyer, service_code="phone-verification", currency="USD", payment_method="pm_card_visa", client_key=key
    )


@pytest.mark.django_db(transaction=True)
def test_twenty_concurrent_partial_refunds_never_exceed_the_captured_amount(sandbox):
    service_create()
    buyer, finance = buyer_create(), finance_create()
    purchase = buy(buyer, "r")
    purchase_report_delivery(purchase_id=purchase.pk, actor=deliverer_create(), outcome="delivered")

    def refund(n: int) -> Callable[[], str]:
        def call() -> str:
            try:
                amount = Money(700, "USD")
                return purchase_refund(purchase_id=purchase.pk, amount=amount, actor=finance, client_key=f"r{n}").status
            except InvalidRequest:
                return "refused"

        return call

    outcomes = in_threads([refund(n) for n in range(20)])
    assert outcomes.count("succeeded") == 14  # 14 x 700 = 9,800 <= 10,000 < 15 x 700
    assert outcomes.count("refused") == 6
    purchase.refresh_from_db()
    assert purchase.refunded_minor == purchase.refund_reserved_minor == 9_800
    assert PurchaseRefund.objects.filter(status="succeeded").count() == 14
    at_stripe = sum(r["amount"] for r in stripe_sandbox.state_of(sandbox).refunds.values())
    assert at_stripe == 9_800
    captured = stripe_sandbox.state_of(sandbox).payment_intents[purchase.payment_intent_id]["amount_received"]
    assert captured - at_stripe == 200
    # every provider movement posted once, no more: what Stripe holds for us, less the fee it kept on the capture
    assert (posted(CLEARING), posted(FEES)) == (200 - FEE, FEE)
    assert posted(REVENUE) == posted(CLEARING) + posted(FEES) == 200  # money conserved: the two sides agree
    assert ledger_integrity_report().findings == []


@pytest.mark.django_db(transaction=True)
def test_cancel_delivery_and_timeout_racing_have_exactly_one_outcome(sandbox):
    service_create()
    buyer, deliverer = buyer_create(), deliverer_create()
    purchases = [buy(buyer, f"race-{n}") for n in range(5)]
    Purchase.objects.update(deliver_by=timezone.now() - timedelta(seconds=1))
    winners = []
    for purchase in purchases:
        results = in_threads(
            [
                lambda p=purchase: purchase_cancel(purchase_id=p.pk, actor=buyer).outcome,
                lambda p=purchase: (
                    purchase_report_delivery(purchase_id=p.pk, actor=deliverer, outcome="delivered").outcome
                ),
                lambda p=purchase: "timed_out" if purchase_time_out(purchase_id=p.pk) else "not_due",
            ]
        )
        purchase.refresh_from_db()
        winners.append(purchase.outcome)
        assert purchase.outcome in ("cancelled", "delivered", "timed_out")
        lost = [r for r in results if r in ("invalid_state", "not_due")]
        assert len(lost) == 2, results  # the two others were told it was already decided
        expected = "captured" if purchase.outcome == "delivered" else "voided"
        assert purchase.status == expected
    calls = sandbox.calls["stripe.payment_intents.capture"] + sandbox.calls["stripe.payment_intents.cancel"]
    assert calls == len(purchases)  # exactly one money call per purchase
    delivered = winners.count("delivered")
    assert posted(REVENUE) == 10_000 * delivered
    assert (posted(CLEARING), posted(FEES)) == ((10_000 - FEE) * delivered, FEE * delivered)
    assert ledger_integrity_report().findings == []
