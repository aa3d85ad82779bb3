"""Purchases on the one money-moving protocol, against the Stripe sandbox with injected faults.

One table of operations (capture, void, refund) times fault sequences:
- applied, then the answer lost (`applied_then_timeout`), then every later try refused (503, 429, a 400 saying
  it is done already): never taken as not done; once Stripe answers again the sweeper finds it done;
- not applied (`timeout`, `reset`, a 503): the sweeper's look-up finds nothing and re-sends under the same key;
- applied, then Stripe forgets our key (its 24 h window passed): found by the look-up, never sent again.
After the sweep each case asserts exactly one capture, void or refund at the sandbox under one key, and a ledger
equal to the sandbox's amounts. Time moves by setting the movement's `next_sync_at` in the past, never by sleeping.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import pytest
from django.conf import settings as django_settings
from django.utils import timezone

from core.models import Alert
from core.money import Money
from escrow.models import Purchase, PurchaseRefund, SpendReservation
from escrow.purchases import purchase_cancel, purchase_create, purchase_refund, purchase_report_delivery, purchase_sync
from ledger.integrity import ledger_integrity_report
from ledger.models import Account, Transaction
from ledger.selectors import account_balance
from providers.breaker import shared_redis
from providers.models import MoneyMovement
from providers.protocol import movements_sweep
from providers.sandbox import stripe as stripe_sandbox
from providers.sandbox.server import Fault
from providers.webhooks import webhook_process, webhook_receive
from tests.escrow.factories_deals import stripe_fee_kept
from tests.escrow.factories_purchases import buyer_create, deliverer_create, finance_create, service_create

CLEARING, REVENUE = "provider:stripe:clearing:USD", "platform:revenue:services:USD"
FEES = "platform:provider-fees:stripe:USD"
FEE = 320  # Stripe's USD card fee on the 10,000 price, by the seeded rule: 2.9% = 290, plus 30
PRICE, REFUND_MINOR = 10_000, 4_000


@pytest.fixture(autouse=True)
def _isolated(settings, db):
    prefix = settings.PROVIDER_STATE_KEY_PREFIX = f"test:purchases-protocol:{uuid.uuid4().hex}"
    settings.PROVIDER_RETRY_ATTEMPTS = 1  # a retry is a keyed replay; keep call counts exact
    service_create()
    yield
    client = shared_redis()
    for key in client.scan_iter(f"{prefix}:*") if client else []:
        client.delete(key)


@dataclass
class People:
    buyer: Any
    deliverer: Any
    finance: Any


@pytest.fixture
def people() -> People:
    return People(buyer_create(), deliverer_create(), finance_create())


def stripe_error(code: str, message: str) -> dict[str, Any]:
    return {"error": {"type": "invalid_request_error", "code": code, "message": message}}


@dataclass(frozen=True)
class Op:
    name: str
    call: str  # the sandbox operation that moves the money
    look_up: str  # the sandbox operation the protocol's look-up reads
    done_already: dict[str, Any]  # how Stripe refuses a repeat of a request it applied

    def movement(self, purchase: Purchase) -> MoneyMovement:
        if self.name == "refund":
            refund = PurchaseRefund.objects.get(purchase=purchase)
            return MoneyMovement.objects.get(operation="purchase.refund", subject_id=refund.pk)
        return MoneyMovement.objects.get(operation=f"purchase.{self.name}", subject_id=purchase.pk)


OPS = {
    "capture": Op(
        "capture",
        "stripe.payment_intents.capture",
        "stripe.payment_intents.retrieve",
        stripe_error("payment_intent_unexpected_state", "This PaymentIntent has a status of succeeded."),
    ),
    "void": Op(
        "void",
        "stripe.payment_intents.cancel",
        "stripe.payment_intents.retrieve",
        stripe_error("payment_intent_unexpected_state", "You cannot cancel this PaymentIntent: it is canceled."),
    ),
    "refund": Op(
        "refund",
        "stripe.refunds.create",
        "stripe.refunds.list",
        stripe_error("charge_already_refunded", "Charge ch_x has already been refunded."),
    ),
}

# Class 1 of the issue: every way Stripe can refuse a repeat; none of them says the first request did nothing.
REFUSALS: dict[str, Callable[[Op], dict[str, Any]]] = {
    "503": lambda op: {"status": 503},
    "429": lambda op: {
        "status": 429,
        "body": {"error": {"type": "rate_limit_error", "message": "Too many requests."}},
        "headers": {"Retry-After": "1"},
    },
    "400_done_already": lambda op: {"status": 400, "body": op.done_already},
}


def buy(buyer, key: str = "k1") -> Purchase:
    return purchase_create(
        buyer=buyer, service_code="phone-verification", currency="USD", payment_method="pm_card_visa", client_key=key
    )


def start(op: Op, sandbox, people: People, fault: Fault | None) -> Purchase:
    """A reserved purchase, then the operation under test, with `fault` on its first money call."""
    purchase = buy(people.buyer)
    if op.name == "refund":
        purchase_report_delivery(purchase_id=purchase.pk, actor=people.deliverer, outcome="delivered")
    if fault is not None:
        sandbox.add_fault(fault)
    if op.name == "capture":
        purchase_report_delivery(purchase_id=purchase.pk, actor=people.deliverer, outcome="delivered")
    elif op.name == "void":
        purchase_cancel(purchase_id=purchase.pk, actor=people.buyer)
    else:
        amount = Money(REFUND_MINOR, "USD")
        purchase_refund(purchase_id=purchase.pk, amount=amount, actor=people.finance, client_key="r1")
    return Purchase.objects.get(pk=purchase.pk)


def posted(code: str) -> int:
    account = Account.objects.filter(code=code).first()
    return account_balance(account).posted.minor if account else 0


def make_due(movement: MoneyMovement) -> None:
    MoneyMovement.objects.filter(pk=movement.pk).update(next_sync_at=timezone.now() - timedelta(seconds=1))


def sweep(movement: MoneyMovement) -> int:
    """The protocol's beat job, once the movement's next look has come."""
    make_due(movement)
    return movements_sweep()


def spend_counted(purchase: Purchase) -> bool:
    return SpendReservation.objects.get(reference=f"purchase:{purchase.pk}").released_at is None


def stripe_keys(sandbox, op: Op) -> list[str]:
    word = {"capture": ":capture", "void": ":void", "refund": ":refund:"}[op.name]
    return sorted({key for _, key in stripe_sandbox.state_of(sandbox).idempotency if word in key})


def assert_not_known(op: Op, purchase: Purchase) -> None:
    """Unknown, and nothing recorded as done or as not done."""
    purchase.refresh_from_db()
    movement = op.movement(purchase)
    assert movement.status == "unknown" and movement.was_unknown
    assert MoneyMovement.objects.filter(operation=movement.operation).count() == 1  # never a new key
    if op.name == "capture":
        assert purchase.status == "capture_unknown" and purchase.captured_minor == 0
        assert not Transaction.objects.filter(kind="service_purchase_capture").exists()
    elif op.name == "void":
        assert purchase.status == "void_unknown" and spend_counted(purchase)
    else:
        refund = PurchaseRefund.objects.get(purchase=purchase)
        assert refund.status == "unknown" and purchase.refund_reserved_minor == REFUND_MINOR  # reservation kept
        assert purchase.refunded_minor == 0
        assert not Transaction.objects.filter(kind="service_purchase_refund").exists()


def assert_done_once(op: Op, sandbox, purchase: Purchase, *, keys_forgotten: bool = False) -> None:
    """Exactly one movement at the sandbox, under one key, and the ledger equal to the sandbox's amounts."""
    purchase.refresh_from_db()
    movement = op.movement(purchase)
    assert movement.status == "succeeded"
    assert stripe_keys(sandbox, op) == ([] if keys_forgotten else [movement.key])
    state = stripe_sandbox.state_of(sandbox)
    intent = state.payment_intents[purchase.payment_intent_id]
    charges = [t for t in state.balance_transactions.values() if t["type"] == "charge"]
    refunds = [r for r in state.refunds.values() if r["payment_intent"] == purchase.payment_intent_id]
    if op.name == "capture":
        assert intent["status"] == "succeeded" and len(charges) == 1
        assert purchase.status == "captured" and purchase.captured_minor == intent["amount_received"] == PRICE
        fee = stripe_fee_kept(sandbox, purchase.payment_intent_id)
        assert (posted(CLEARING), posted(REVENUE), posted(FEES)) == (PRICE - fee, PRICE, fee)
    elif op.name == "void":
        assert intent["status"] == "canceled" and not charges and not refunds
        assert purchase.status == "voided" and not spend_counted(purchase)
        assert not Transaction.objects.exists()  # a void moves no money
    else:
        assert [r["amount"] for r in refunds] == [REFUND_MINOR]
        (refund,) = PurchaseRefund.objects.filter(purchase=purchase)
        assert refund.status == "succeeded" and refund.provider_reference == refunds[0]["id"]
        assert purchase.refunded_minor == purchase.refund_reserved_minor == REFUND_MINOR
        assert posted(REVENUE) == PRICE - sum(r["amount"] for r in refunds)
        assert posted(CLEARING) == PRICE - FEE - sum(r["amount"] for r in refunds)
    assert not MoneyMovement.objects.filter(status__in=MoneyMovement.OPEN).exists()
    assert ledger_integrity_report().findings == []


@pytest.mark.django_db
@pytest.mark.parametrize("refusal", sorted(REFUSALS))
@pytest.mark.parametrize("op_name", sorted(OPS))
def test_applied_then_lost_and_every_repeat_refused_is_never_taken_as_not_done(sandbox, people, op_name, refusal):
    op = OPS[op_name]
    purchase = start(op, sandbox, people, Fault(operation=op.call, kind="applied_then_timeout"))
    assert_not_known(op, purchase)
    movement = op.movement(purchase)
    refused = REFUSALS[refusal](op)
    for operation in (op.look_up, op.call):  # Stripe refuses everything for a while, in its own words
        sandbox.add_fault(Fault(operation=operation, kind="error", times=None, **refused))
    assert sweep(movement) == 1  # the sweeper looked and learnt nothing
    purchase_sync(purchase_id=purchase.pk)  # nor does staff's "sync now"
    assert_not_known(op, purchase)
    assert sandbox.calls[op.call] == 1  # never re-sent while in doubt
    movement.refresh_from_db()
    assert movement.next_sync_at is not None and movement.sync_attempts == 3  # still on the schedule

    sandbox.clear_faults()
    assert sweep(movement) == 1
    assert_done_once(op, sandbox, purchase)
    assert sandbox.calls[op.call] == 1


@pytest.mark.django_db
@pytest.mark.parametrize("kind", ["timeout", "reset", "error"])
@pytest.mark.parametrize("op_name", sorted(OPS))
def test_a_call_that_never_took_effect_is_sent_again_by_the_sweeper_under_the_same_key(sandbox, people, op_name, kind):
    op = OPS[op_name]
    purchase = start(op, sandbox, people, Fault(operation=op.call, kind=kind, status=503))
    assert_not_known(op, purchase)  # we cannot tell it never took effect
    assert sweep(op.movement(purchase)) == 1  # the look-up finds nothing: the same request again
    assert sandbox.calls[op.call] == 2
    assert_done_once(op, sandbox, purchase)


@pytest.mark.django_db
@pytest.mark.parametrize("op_name", sorted(OPS))
def test_past_the_key_window_the_look_up_finds_it_and_nothing_is_sent(sandbox, people, op_name):
    op = OPS[op_name]
    purchase = start(op, sandbox, people, Fault(operation=op.call, kind="applied_then_timeout"))
    sandbox.forget_idempotency_keys("stripe")  # a re-send now would be a new request to Stripe
    assert sweep(op.movement(purchase)) == 1
    assert sandbox.calls[op.call] == 1
    assert_done_once(op, sandbox, purchase, keys_forgotten=True)


@pytest.mark.django_db
def test_a_pending_refund_is_waiting_never_success(sandbox, people):
    op = OPS["refund"]
    purchase = start(op, sandbox, people, Fault(operation=op.call, kind="applied_then_timeout"))
    (refund_at_stripe,) = stripe_sandbox.state_of(sandbox).refunds.values()
    refund_at_stripe["status"] = "pending"  # Stripe has it, and will settle it later
    movement = op.movement(purchase)
    sweep(movement)
    movement.refresh_from_db()
    refund = PurchaseRefund.objects.get(purchase=purchase)
    purchase.refresh_from_db()
    assert movement.status == "waiting" and refund.status == "waiting"
    assert refund.provider_reference == refund_at_stripe["id"]
    assert purchase.refunded_minor == 0 and purchase.refund_reserved_minor == REFUND_MINOR
    assert not Transaction.objects.filter(kind="service_purchase_refund").exists()

    refund_at_stripe["status"] = "succeeded"
    sweep(movement)
    assert_done_once(op, sandbox, purchase)


@pytest.mark.django_db
def test_a_capture_refused_before_it_ran_is_tried_again_under_a_new_key(sandbox, people):
    purchase = buy(people.buyer)
    sandbox.add_fault(
        Fault(operation="stripe.payment_intents.capture", kind="error", **REFUSALS["429"](OPS["capture"]))
    )
    purchase = purchase_report_delivery(purchase_id=purchase.pk, actor=people.deliverer, outcome="delivered")
    first, second = MoneyMovement.objects.filter(operation="purchase.capture").order_by("id")
    assert first.status == "declined" and second.status == "pending"  # known not done: the next attempt
    assert second.key == f"{purchase.capture_key}:2" and purchase.status == "capturing"
    assert sweep(second) == 1
    purchase.refresh_from_db()
    assert purchase.status == "captured" and sandbox.calls["stripe.payment_intents.capture"] == 2
    assert (posted(CLEARING), posted(REVENUE), posted(FEES)) == (PRICE - FEE, PRICE, FEE)


@pytest.mark.django_db
def test_a_capture_that_finds_the_hold_canceled_voids_the_purchase_and_alerts(sandbox, people):
    purchase = buy(people.buyer)
    stripe_sandbox.state_of(sandbox).payment_intents[purchase.payment_intent_id]["status"] = "canceled"  # expired
    purchase = purchase_report_delivery(purchase_id=purchase.pk, actor=people.deliverer, outcome="delivered")
    assert purchase.status == "voided" and not spend_counted(purchase)
    assert not Transaction.objects.exists()
    assert Alert.objects.get(key=f"escrow:purchase:{purchase.pk}").title.endswith("delivered but never paid")
    assert MoneyMovement.objects.filter(operation="purchase.capture").count() == 1  # no retry: it can never be


# --- webhooks while a movement is open: recorded from the event, never a call inside the transaction --------


def deliver_event(event: dict[str, Any]):
    body = json.dumps(event).encode()
    signature = stripe_sandbox.stripe_signature(body, django_settings.STRIPE_WEBHOOK_SECRET, int(time.time()))
    stored, _ = webhook_receive(provider="stripe", body=body, headers={"Stripe-Signature": signature})
    return stored


def event_of(sandbox, event_type: str, object_id: str) -> dict[str, Any]:
    events = stripe_sandbox.state_of(sandbox).events
    return next(e for e in reversed(events) if e["type"] == event_type and e["data"]["object"]["id"] == object_id)


@pytest.mark.django_db
def test_a_webhook_settles_an_open_capture_without_calling_stripe(sandbox, people):
    op = OPS["capture"]
    purchase = start(op, sandbox, people, Fault(operation=op.call, kind="applied_then_timeout"))
    stored = deliver_event(event_of(sandbox, "payment_intent.succeeded", purchase.payment_intent_id))
    calls_before = sum(sandbox.calls.values())
    assert webhook_process(event_pk=stored.pk).status == "processed"
    assert sum(sandbox.calls.values()) == calls_before  # not one call while processing
    assert_done_once(op, sandbox, purchase)


@pytest.mark.django_db
def test_an_event_that_settles_nothing_only_nudges_the_sync_after_commit(
    sandbox, people, django_capture_on_commit_callbacks
):
    op = OPS["capture"]
    purchase = start(op, sandbox, people, Fault(operation=op.call, kind="applied_then_timeout"))
    older = event_of(sandbox, "payment_intent.amount_capturable_updated", purchase.payment_intent_id)
    stored = deliver_event(older)  # the hold, delivered late: says nothing about the capture
    calls_before = sum(sandbox.calls.values())
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        webhook_process(event_pk=stored.pk)
    assert sum(sandbox.calls.values()) == calls_before and len(callbacks) == 1
    assert op.movement(purchase).status == "unknown"
    callbacks[0]()  # after commit: the nudge looks the capture up
    assert sandbox.calls[op.look_up] == 1
    assert_done_once(op, sandbox, purchase)


@pytest.mark.django_db
def test_a_webhook_settles_an_open_refund_without_calling_stripe(sandbox, people):
    op = OPS["refund"]
    purchase = start(op, sandbox, people, Fault(operation=op.call, kind="applied_then_timeout"))
    (refund_at_stripe,) = stripe_sandbox.state_of(sandbox).refunds.values()
    stored = deliver_event(event_of(sandbox, "refund.created", refund_at_stripe["id"]))
    calls_before = sum(sandbox.calls.values())
    webhook_process(event_pk=stored.pk)
    assert sum(sandbox.calls.values()) == calls_before
    assert_done_once(op, sandbox, purchase)
