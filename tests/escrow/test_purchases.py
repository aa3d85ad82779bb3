"""Purchases end to end against the Stripe sandbox over real HTTP: reserve, deliver or fail, void or refund."""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest
from django.utils import timezone

from core.errors import IdempotencyMismatch, InvalidRequest, InvalidStateTransition, NotFound, PermissionDenied
from core.models import AuditLog
from core.money import Money
from escrow.limits import SpendLimitExceeded
from escrow.models import Purchase, PurchaseRefund, SpendLimit, SpendReservation
from escrow.purchases import (
    purchase_cancel,
    purchase_create,
    purchase_refund,
    purchase_report_delivery,
    purchase_sync,
)
from escrow.tasks import time_out_purchases_task
from ledger.integrity import ledger_integrity_report
from ledger.models import Account, Transaction
from ledger.selectors import account_balance
from providers.breaker import shared_redis
from providers.models import FeeRule, MoneyMovement
from providers.protocol import movements_sweep
from providers.sandbox import stripe as stripe_sandbox
from providers.sandbox.server import Fault
from tests.escrow.factories_deals import stripe_fee_kept
from tests.escrow.factories_purchases import buyer_create, deliverer_create, finance_create, service_create

CLEARING, REVENUE = "provider:stripe:clearing:USD", "platform:revenue:services:USD"
FEES = "platform:provider-fees:stripe:USD"
FEE = 320  # Stripe's USD card fee on the 10,000 price, by the seeded rule: 2.9% = 290, plus 30


@pytest.fixture(autouse=True)
def _isolated(settings):
    prefix = settings.PROVIDER_STATE_KEY_PREFIX = f"test:purchases:{uuid.uuid4().hex}"
    settings.PROVIDER_RETRY_ATTEMPTS = 1  # a retry is a keyed replay; keep call counts exact
    yield
    client = shared_redis()
    for key in client.scan_iter(f"{prefix}:*") if client else []:
        client.delete(key)


@pytest.fixture
def service(db):
    return service_create()


@pytest.fixture
def buyer(db):
    return buyer_create()


@pytest.fixture
def deliverer(db):
    return deliverer_create()


@pytest.fixture
def finance(db):
    return finance_create()


def buy(buyer, key: str = "k1", card: str = "pm_card_visa", **extra) -> Purchase:
    return purchase_create(
        buyer=buyer, service_code="phone-verification", currency="USD", payment_method=card, client_key=key, **extra
    )


def posted(code: str) -> int:
    account = Account.objects.filter(code=code).first()
    return account_balance(account).posted.minor if account else 0


def intent(sandbox, purchase: Purchase) -> dict:
    return stripe_sandbox.state_of(sandbox).payment_intents[purchase.payment_intent_id]


def movement(purchase: Purchase, operation: str) -> MoneyMovement:
    return MoneyMovement.objects.get(operation=f"purchase.{operation}", subject_id=purchase.pk)


def make_due(movement: MoneyMovement) -> None:
    """The sweeper's time for it has come (time moves by the row, not by sleeping)."""
    MoneyMovement.objects.filter(pk=movement.pk).update(next_sync_at=timezone.now() - timedelta(seconds=1))


def spend_counted(purchase: Purchase) -> bool:
    reservation = SpendReservation.objects.get(reference=f"purchase:{purchase.pk}")
    return reservation.released_at is None


@pytest.mark.django_db
def test_a_delivered_purchase_is_authorized_then_captured_and_posted_once(sandbox, service, buyer, deliverer):
    purchase = buy(buyer, amount_minor=10_000)
    assert purchase.status == Purchase.Status.RESERVED
    assert intent(sandbox, purchase)["status"] == "requires_capture"
    assert intent(sandbox, purchase)["capture_method"] == "manual"
    assert posted(CLEARING) == 0  # an authorization moves no money
    assert spend_counted(purchase)

    purchase = purchase_report_delivery(purchase_id=purchase.pk, actor=deliverer, outcome="delivered", detail="ok")
    assert (purchase.status, purchase.outcome, purchase.captured_minor) == ("captured", "delivered", 10_000)
    assert intent(sandbox, purchase)["status"] == "succeeded"
    assert (posted(CLEARING), posted(REVENUE), posted(FEES)) == (10_000 - FEE, 10_000, FEE)
    assert stripe_fee_kept(sandbox, purchase.payment_intent_id) == FEE  # what Stripe kept, as the ledger says
    capture = Transaction.objects.get(idempotency_key=f"purchase:{purchase.pk}:capture:settle")
    assert sorted(capture.entries.values_list("account__code", "amount_minor")) == [
        (FEES, FEE), (REVENUE, -10_000), (CLEARING, -FEE), (CLEARING, 10_000),
    ]  # fmt: skip
    assert capture.metadata["provider"] == "stripe"
    assert capture.metadata["provider_reference"] == purchase.payment_intent_id
    # the same report again changes nothing
    purchase_report_delivery(purchase_id=purchase.pk, actor=deliverer, outcome="delivered")
    assert sandbox.calls["stripe.payment_intents.create"] == 1
    assert sandbox.calls["stripe.payment_intents.capture"] == 1
    assert (posted(CLEARING), posted(FEES)) == (10_000 - FEE, FEE)
    assert AuditLog.objects.filter(action="escrow.purchase.delivered", object_id=str(purchase.pk)).count() == 1
    assert spend_counted(purchase)  # money moved: the spend stays counted
    assert ledger_integrity_report().findings == []


@pytest.mark.django_db
def test_a_failed_delivery_voids_the_authorization_and_posts_nothing(sandbox, service, buyer, deliverer):
    purchase = buy(buyer)
    purchase = purchase_report_delivery(purchase_id=purchase.pk, actor=deliverer, outcome="failed", detail="no SMS")
    assert (purchase.status, purchase.outcome, purchase.outcome_detail) == ("voided", "failed", "no SMS")
    assert intent(sandbox, purchase)["status"] == "canceled"
    assert intent(sandbox, purchase)["cancellation_reason"] == "abandoned"
    assert sandbox.calls["stripe.payment_intents.cancel"] == 1
    assert sandbox.calls["stripe.payment_intents.capture"] == 0
    assert not Transaction.objects.exists()
    assert not spend_counted(purchase)
    with pytest.raises(InvalidStateTransition):  # decided once: no delivery after a failure
        purchase_report_delivery(purchase_id=purchase.pk, actor=deliverer, outcome="delivered")


@pytest.mark.django_db
def test_a_failure_reported_after_capture_is_refunded_in_full(sandbox, service, buyer, deliverer):
    purchase = buy(buyer)
    purchase_report_delivery(purchase_id=purchase.pk, actor=deliverer, outcome="delivered")
    purchase = purchase_report_delivery(purchase_id=purchase.pk, actor=deliverer, outcome="failed", detail="bounced")
    assert (purchase.status, purchase.outcome, purchase.refunded_minor) == ("refunded", "failed", 10_000)
    (refund,) = purchase.refunds.all()
    assert refund.status == PurchaseRefund.Status.SUCCEEDED and refund.provider_reference.startswith("re_")
    assert sum(r["amount"] for r in stripe_sandbox.state_of(sandbox).refunds.values()) == 10_000
    # refunded in full; Stripe does not return its fee on a refund: the fee stays an expense
    assert (posted(CLEARING), posted(REVENUE), posted(FEES)) == (-FEE, 0, FEE)
    posting = Transaction.objects.get(idempotency_key=f"purchase:{purchase.pk}:refund:{refund.pk}:settle")
    assert posting.metadata["provider_reference"] == refund.provider_reference
    assert not MoneyMovement.objects.filter(status__in=MoneyMovement.OPEN).exists()  # nothing left to finish
    assert sandbox.calls["stripe.refunds.create"] == 1
    assert ledger_integrity_report().findings == []


@pytest.mark.django_db
def test_the_timeout_task_voids_purchases_past_their_deadline(sandbox, service, buyer):
    late, fresh = buy(buyer, key="late"), buy(buyer, key="fresh")
    Purchase.objects.filter(pk=late.pk).update(deliver_by=timezone.now() - timedelta(seconds=1))
    assert time_out_purchases_task() == 1
    late.refresh_from_db()
    fresh.refresh_from_db()
    assert (late.status, late.outcome) == ("voided", "timed_out")
    assert (fresh.status, fresh.outcome) == ("reserved", "")
    assert intent(sandbox, late)["status"] == "canceled"
    assert time_out_purchases_task() == 0
    assert sandbox.calls["stripe.payment_intents.cancel"] == 1
    assert AuditLog.objects.filter(action="escrow.purchase.timeout", object_id=str(late.pk)).count() == 1


@pytest.mark.django_db
def test_the_buyer_cancels_a_pending_purchase_and_only_their_own(sandbox, service, buyer, deliverer):
    purchase = buy(buyer)
    with pytest.raises(NotFound):
        purchase_cancel(purchase_id=purchase.pk, actor=buyer_create())
    purchase = purchase_cancel(purchase_id=purchase.pk, actor=buyer)
    assert (purchase.status, purchase.outcome) == ("voided", "cancelled")
    assert intent(sandbox, purchase)["cancellation_reason"] == "requested_by_customer"
    assert purchase_cancel(purchase_id=purchase.pk, actor=buyer).status == "voided"  # repeat: same answer
    assert sandbox.calls["stripe.payment_intents.cancel"] == 1
    delivered = buy(buyer, key="k2")
    purchase_report_delivery(purchase_id=delivered.pk, actor=deliverer, outcome="delivered")
    with pytest.raises(InvalidStateTransition) as error:
        purchase_cancel(purchase_id=delivered.pk, actor=buyer)
    assert "delivered" in error.value.user_message


@pytest.mark.django_db
def test_only_the_service_back_end_reports_delivery_never_the_buyer(sandbox, service, buyer, deliverer):
    purchase = buy(buyer)
    with pytest.raises(PermissionDenied):
        purchase_report_delivery(purchase_id=purchase.pk, actor=buyer, outcome="delivered")
    buyer.user_permissions.add(*deliverer.user_permissions.all())
    buyer = type(buyer).objects.get(pk=buyer.pk)
    with pytest.raises(PermissionDenied) as error:  # even holding the permission, not for their own purchase
        purchase_report_delivery(purchase_id=purchase.pk, actor=buyer, outcome="delivered")
    assert "own purchase" in error.value.user_message
    with pytest.raises(InvalidRequest):
        purchase_report_delivery(purchase_id=purchase.pk, actor=deliverer, outcome="maybe")
    assert Purchase.objects.get(pk=purchase.pk).status == "reserved"
    assert sandbox.calls["stripe.payment_intents.capture"] == 0


@pytest.mark.django_db
def test_a_declined_card_releases_the_spend_and_the_key_replays(sandbox, service, buyer):
    purchase = buy(buyer, card="pm_card_chargeDeclinedInsufficientFunds")
    assert purchase.status == "declined" and "insufficient funds" in purchase.failure_reason
    assert not spend_counted(purchase)
    assert buy(buyer, card="pm_card_chargeDeclinedInsufficientFunds").pk == purchase.pk  # same key, same purchase
    with pytest.raises(IdempotencyMismatch):
        buy(buyer, card="pm_card_visa")
    assert sandbox.calls["stripe.payment_intents.create"] == 1


@pytest.mark.django_db
def test_a_price_other_than_the_catalogue_is_refused_and_nothing_is_recorded(sandbox, service, buyer):
    with pytest.raises(InvalidRequest) as error:
        buy(buyer, amount_minor=9_999)
    assert error.value.details["price_minor"] == 10_000
    with pytest.raises(InvalidRequest):
        purchase_create(
            buyer=buyer,
            service_code="phone-verification",
            currency="EUR",
            payment_method="pm_card_visa",
            client_key="e",
        )
    assert not Purchase.objects.exists() and sandbox.calls["stripe.payment_intents.create"] == 0


@pytest.mark.django_db
def test_over_the_spend_limit_nothing_is_recorded_and_nothing_is_sent(sandbox, service, buyer):
    SpendLimit.objects.create(scope="user", currency="USD", window="day", max_amount_minor=15_000)
    buy(buyer, key="first")
    with pytest.raises(SpendLimitExceeded) as error:
        buy(buyer, key="second")
    assert error.value.http_status == 429 and "resets_at" in error.value.details
    assert Purchase.objects.count() == 1 and sandbox.calls["stripe.payment_intents.create"] == 1


@pytest.mark.django_db
def test_an_unknown_authorization_is_resolved_by_a_look_up_never_a_second_hold(sandbox, service, buyer):
    sandbox.add_fault(Fault(operation="stripe.payment_intents.create", kind="applied_then_timeout"))
    purchase = buy(buyer)
    authorize = movement(purchase, "authorize")
    assert purchase.status == "authorize_unknown"
    assert authorize.status == "unknown" and authorize.next_sync_at is not None  # the sweeper will look
    assert len(stripe_sandbox.state_of(sandbox).payment_intents) == 1  # Stripe did authorize
    purchase = purchase_sync(purchase_id=purchase.pk)
    assert purchase.status == "reserved" and purchase.payment_intent_id
    assert len(stripe_sandbox.state_of(sandbox).payment_intents) == 1
    assert sandbox.calls["stripe.payment_intents.create"] == 1  # found by our key, never sent again
    assert sandbox.calls["stripe.payment_intents.search"] == 1


@pytest.mark.django_db
def test_a_cancel_while_the_authorization_is_unknown_voids_it_once_known(sandbox, service, buyer):
    sandbox.add_fault(Fault(operation="stripe.payment_intents.create", kind="applied_then_timeout"))
    purchase = buy(buyer)
    purchase = purchase_cancel(purchase_id=purchase.pk, actor=buyer)
    assert (purchase.status, purchase.outcome) == ("authorize_unknown", "cancelled")
    purchase = purchase_sync(purchase_id=purchase.pk)
    assert purchase.status == "voided" and intent(sandbox, purchase)["status"] == "canceled"
    assert not spend_counted(purchase)


@pytest.mark.django_db
def test_an_unknown_capture_is_resolved_from_the_payment_intent(sandbox, service, buyer, deliverer):
    purchase = buy(buyer)
    sandbox.add_fault(Fault(operation="stripe.payment_intents.capture", kind="applied_then_timeout"))
    purchase = purchase_report_delivery(purchase_id=purchase.pk, actor=deliverer, outcome="delivered")
    assert purchase.status == "capture_unknown" and posted(CLEARING) == posted(FEES) == 0
    assert movements_sweep() == 0  # not due yet
    make_due(movement(purchase, "capture"))
    assert movements_sweep() == 1
    purchase.refresh_from_db()
    assert purchase.status == "captured" and (posted(CLEARING), posted(FEES)) == (10_000 - FEE, FEE)
    assert sandbox.calls["stripe.payment_intents.capture"] == 1  # found done: not sent again


@pytest.mark.django_db
def test_a_void_that_never_reached_stripe_is_sent_again_under_the_same_key(sandbox, service, buyer):
    purchase = buy(buyer)
    sandbox.add_fault(Fault(operation="stripe.payment_intents.cancel", kind="error", status=500))
    purchase = purchase_cancel(purchase_id=purchase.pk, actor=buyer)
    assert purchase.status == "void_unknown"
    purchase = purchase_sync(purchase_id=purchase.pk)
    assert purchase.status == "voided" and intent(sandbox, purchase)["status"] == "canceled"
    assert sandbox.calls["stripe.payment_intents.cancel"] == 2
    assert [key for _, key in stripe_sandbox.state_of(sandbox).idempotency if "void" in key] == [purchase.void_key]


@pytest.mark.django_db
def test_finance_refunds_part_then_the_rest_and_never_more(sandbox, service, buyer, deliverer, finance):
    purchase = buy(buyer)
    purchase_report_delivery(purchase_id=purchase.pk, actor=deliverer, outcome="delivered")
    with pytest.raises(PermissionDenied):
        purchase_refund(purchase_id=purchase.pk, amount=Money(100, "USD"), actor=buyer, client_key="x")
    part = purchase_refund(purchase_id=purchase.pk, amount=Money(3_000, "USD"), actor=finance, client_key="a")
    assert part.status == "succeeded"
    again = purchase_refund(purchase_id=purchase.pk, amount=Money(3_000, "USD"), actor=finance, client_key="a")
    assert again.pk == part.pk
    with pytest.raises(InvalidRequest) as error:
        purchase_refund(purchase_id=purchase.pk, amount=Money(7_001, "USD"), actor=finance, client_key="b")
    assert error.value.details["refundable_minor"] == 7_000
    with pytest.raises(InvalidRequest):
        purchase_refund(purchase_id=purchase.pk, amount=Money(100, "PHP"), actor=finance, client_key="c")
    rest = purchase_cancel(purchase_id=purchase.pk, actor=finance)  # cancel and refund
    assert (rest.status, rest.outcome, rest.refunded_minor) == ("refunded", "cancelled", 10_000)
    assert (posted(CLEARING), posted(REVENUE), posted(FEES)) == (-FEE, 0, FEE)
    assert sandbox.calls["stripe.refunds.create"] == 2
    assert AuditLog.objects.filter(action="escrow.purchase.refund").count() == 2


@pytest.mark.django_db
def test_a_declined_refund_gives_its_reservation_back(sandbox, service, buyer, deliverer, finance):
    purchase = buy(buyer)
    purchase_report_delivery(purchase_id=purchase.pk, actor=deliverer, outcome="delivered")
    sandbox.add_fault(Fault(operation="stripe.refunds.create", kind="error", status=400))
    refund = purchase_refund(purchase_id=purchase.pk, amount=Money(4_000, "USD"), actor=finance, client_key="a")
    purchase.refresh_from_db()
    assert refund.status == "failed" and purchase.refund_reserved_minor == 0
    assert (posted(CLEARING), posted(REVENUE), posted(FEES)) == (10_000 - FEE, 10_000, FEE)


@pytest.mark.django_db
def test_a_stripe_webhook_resolves_an_unknown_capture_and_ignores_other_objects(sandbox, service, buyer, deliverer):
    import json
    import time

    from django.conf import settings

    from providers.webhooks import webhook_process, webhook_receive

    purchase = buy(buyer)
    sandbox.add_fault(Fault(operation="stripe.payment_intents.capture", kind="applied_then_timeout"))
    purchase = purchase_report_delivery(purchase_id=purchase.pk, actor=deliverer, outcome="delivered")
    assert purchase.status == "capture_unknown"
    events = stripe_sandbox.state_of(sandbox).events
    succeeded = next(e for e in events if e["type"] == "payment_intent.succeeded")
    foreign = {**succeeded, "id": "evt_foreign", "data": {"object": {**succeeded["data"]["object"], "metadata": {}}}}
    for event in (foreign, succeeded):
        body = json.dumps(event).encode()
        signature = stripe_sandbox.stripe_signature(body, settings.STRIPE_WEBHOOK_SECRET, int(time.time()))
        stored, _ = webhook_receive(provider="stripe", body=body, headers={"Stripe-Signature": signature})
        webhook_process(event_pk=stored.pk)
        purchase.refresh_from_db()
        if event is foreign:
            assert purchase.status == "capture_unknown"  # not ours: ignored
    assert (purchase.status, purchase.captured_minor) == ("captured", 10_000)
    assert (posted(CLEARING), posted(FEES)) == (10_000 - FEE, FEE)
    assert sandbox.calls["stripe.payment_intents.capture"] == 1


@pytest.mark.django_db
def test_a_purchase_whose_authorization_call_never_ran_is_taken_over_by_the_sweeper(sandbox, service, buyer):
    from escrow.purchases.create import purchase_record

    purchase, authorize = purchase_record(  # committed, then the process died before calling Stripe
        buyer=buyer, service_code="phone-verification", currency="USD", payment_method="pm_card_visa",
        client_key="crash", amount_minor=None,
    )  # fmt: skip
    assert authorize is not None and purchase.status == "authorizing" and authorize.status == "pending"
    assert movements_sweep() == 0  # a live request may still be making the call
    make_due(authorize)
    assert movements_sweep() == 1
    purchase.refresh_from_db()
    assert purchase.status == "reserved" and intent(sandbox, purchase)["metadata"]["purchase"] == str(purchase.pk)
    assert sandbox.calls["stripe.payment_intents.create"] == 1
    assert buy(buyer, key="crash").pk == purchase.pk  # the client's retry finds it


@pytest.mark.django_db
def test_a_php_capture_posts_stripes_php_fee(sandbox, service, buyer, deliverer):
    purchase = purchase_create(
        buyer=buyer, service_code="phone-verification", currency="PHP", payment_method="pm_card_visa", client_key="p"
    )
    purchase_report_delivery(purchase_id=purchase.pk, actor=deliverer, outcome="delivered")
    fee = 2_375  # 3.5% of 25,000 = 875, plus 1,500
    clearing, revenue, fees = (f"{code[:-3]}PHP" for code in (CLEARING, REVENUE, FEES))
    assert (posted(clearing), posted(revenue), posted(fees)) == (25_000 - fee, 25_000, fee)
    assert stripe_fee_kept(sandbox, Purchase.objects.get(pk=purchase.pk).payment_intent_id) == fee
    assert posted(FEES) == 0 and ledger_integrity_report().findings == []


@pytest.mark.django_db
def test_without_a_fee_rule_the_capture_posts_no_fee_leg(sandbox, service, buyer, deliverer):
    FeeRule.objects.filter(provider="stripe", method="card", currency="USD").delete()
    purchase = buy(buyer)
    purchase_report_delivery(purchase_id=purchase.pk, actor=deliverer, outcome="delivered")
    assert (posted(CLEARING), posted(REVENUE), posted(FEES)) == (10_000, 10_000, 0)
    capture = Transaction.objects.get(idempotency_key=f"purchase:{purchase.pk}:capture:settle")
    entries = sorted(capture.entries.values_list("account__code", "amount_minor"))
    assert entries == [(REVENUE, -10_000), (CLEARING, 10_000)]
