"""Escrow deals end to end against the Stripe sandbox over real HTTP: hold, release, refund, timeouts,
transfer retries and webhooks. Money is checked in the ledger and at the sandbox."""

from __future__ import annotations

import json
import time
import uuid
from datetime import timedelta

import pytest
from django.conf import settings as django_settings
from django.utils import timezone

from core.errors import InvalidStateTransition, NotFound, PermissionDenied
from core.models import Alert, AuditLog
from escrow.deals import (
    DealMakerCheckerViolation,
    deal_authorizations_flag_expiring,
    deal_cancel,
    deal_release,
    deal_release_approve,
    deal_timeouts_run,
    deal_transfer_retry,
    deal_transfers_retry_due,
)
from escrow.models import EscrowDeal, SpendReservation
from ledger.integrity import ledger_integrity_report
from ledger.models import Transaction
from providers.breaker import shared_redis
from providers.models import MoneyMovement
from providers.protocol import movement_latest, movements_sweep
from providers.sandbox import stripe as stripe_sandbox
from providers.sandbox.server import Fault
from providers.stripe.client import StripeProviderClient
from providers.webhooks import webhook_process, webhook_receive
from tests.escrow.factories_deals import (
    UserFactory,
    escrow_balances,
    held_deal,
    overdue,
    seller,
    staff,
    stripe_fee_kept,
)

Status = EscrowDeal.Status


@pytest.fixture(autouse=True)
def _isolated(settings):
    prefix = settings.PROVIDER_STATE_KEY_PREFIX = f"test:escrow:{uuid.uuid4().hex}"
    settings.PROVIDER_RETRY_ATTEMPTS = 1  # a retry is a keyed replay; keep sandbox call counts exact
    yield
    client = shared_redis()
    for key in client.scan_iter(f"{prefix}:*") if client else []:
        client.delete(key)


@pytest.fixture
def buyer():
    return UserFactory()


def stripe_state(sandbox):
    return stripe_sandbox.state_of(sandbox)


def deliver(event: dict) -> str:
    """Our webhook intake, as if Stripe had POSTed the event now: verify, store once, process once."""
    body = json.dumps(event).encode()
    signature = stripe_sandbox.stripe_signature(body, django_settings.STRIPE_WEBHOOK_SECRET, int(time.time()))
    stored, _ = webhook_receive(provider="stripe", body=body, headers={"Stripe-Signature": signature})
    return webhook_process(event_pk=stored.pk).status


def events(sandbox, event_type: str) -> list[dict]:
    return [event for event in stripe_state(sandbox).events if event["type"] == event_type]


def postings(deal: EscrowDeal) -> dict[str, Transaction]:
    return {txn.idempotency_key.split(":", 2)[2]: txn for txn in Transaction.objects.filter(
        idempotency_key__startswith=f"escrow:{deal.pk}:")}  # fmt: skip


# --- release ------------------------------------------------------------------------------------------


@pytest.mark.django_db
def test_release_pays_the_seller_minus_commission_with_exact_ledger_amounts(sandbox, buyer):
    account = seller(sandbox, rate_bps=800)
    deal = held_deal(buyer, account, amount_minor=12_345)
    assert (deal.status, deal.hold_mode, deal.commission_bps) == (Status.HELD, "authorization", 800)
    assert deal.commission_minor == 988  # 987.6 rounded half up
    assert escrow_balances() == {
        "authorized": 12_345, "held": 12_345, "payable": 0, "commission": 0, "clearing": 0, "fees": 0,
    }  # fmt: skip

    deal = deal_release(deal_id=deal.pk, actor=buyer)

    assert deal.status == Status.TRANSFERRED and deal.transfer_id.startswith("tr_")
    fee = 388  # Stripe's USD card fee: 2.9% of 12,345 = 358.005 -> 358, plus 30
    assert escrow_balances() == {
        "authorized": 0, "held": 0, "payable": 0, "commission": 988, "clearing": 988 - fee, "fees": fee,
    }  # fmt: skip
    assert stripe_fee_kept(sandbox, deal.payment_intent_id) == fee  # what Stripe kept, as the ledger says
    intent = stripe_state(sandbox).payment_intents[deal.payment_intent_id]
    assert (intent["status"], intent["amount_received"], intent["transfer_group"]) == (
        "succeeded",
        12_345,
        deal.transfer_group,
    )
    (transfer,) = stripe_state(sandbox).transfers.values()
    assert (transfer["amount"], transfer["destination"], transfer["transfer_group"]) == (
        11_357, account.stripe_account_id, f"escrow-{deal.pk}",
    )  # fmt: skip
    assert sandbox.calls["stripe.payment_intents.capture"] == sandbox.calls["stripe.transfers.create"] == 1
    steps = postings(deal)
    assert set(steps) == {"authorize", "capture", "release", "transfer"}
    assert steps["capture"].metadata["provider_reference"] == deal.payment_intent_id
    assert sorted(steps["capture"].entries.values_list("account__code", "amount_minor")) == [
        ("escrow:authorized:USD", -12_345),
        ("platform:provider-fees:stripe:USD", fee),
        ("provider:stripe:clearing:USD", -fee),
        ("provider:stripe:clearing:USD", 12_345),
    ]  # debit positive, credit negative: the capture and Stripe's fee, in one posting
    assert steps["transfer"].metadata == {
        "escrow_deal": deal.pk,
        "provider": "stripe",
        "provider_reference": deal.transfer_id,
    }
    assert "provider_reference" not in steps["release"].metadata  # no clearing account touched
    assert AuditLog.objects.filter(action="escrow.deal.release", object_id=str(deal.pk)).count() == 1
    assert ledger_integrity_report().is_clean


@pytest.mark.django_db
def test_commission_is_rounded_half_up_and_snapshotted_at_creation(sandbox, buyer):
    account = seller(sandbox, rate_bps=500, tier_name="standard")
    deal = held_deal(buyer, account, amount_minor=10_010)  # 500.5
    account.commission_tier.rate_bps = 1500
    account.commission_tier.save()
    deal = deal_release(deal_id=deal.pk, actor=buyer)
    assert (deal.commission_bps, deal.commission_minor) == (500, 501)
    assert stripe_state(sandbox).transfers[deal.transfer_id]["amount"] == 9_509


@pytest.mark.django_db
def test_only_the_buyer_or_permitted_staff_may_release(sandbox, buyer):
    account = seller(sandbox)
    deal = held_deal(buyer, account)
    with pytest.raises(PermissionDenied):
        deal_release(deal_id=deal.pk, actor=account.user)  # the seller cannot pay themselves
    deal = deal_release(deal_id=deal.pk, actor=staff("release_escrowdeal"))
    assert deal.status == Status.TRANSFERRED
    with pytest.raises(InvalidStateTransition) as refused:
        deal_release(deal_id=deal.pk, actor=buyer)
    assert refused.value.http_status == 409 and "transferred" in refused.value.user_message
    assert sandbox.calls["stripe.transfers.create"] == 1


@pytest.mark.django_db
def test_a_large_release_waits_for_a_second_person(sandbox, buyer, settings):
    settings.ESCROW_APPROVAL_THRESHOLD_MINOR = 50_000
    deal = held_deal(buyer, seller(sandbox), amount_minor=60_000)
    maker, checker = staff(), staff()
    deal = deal_release(deal_id=deal.pk, actor=maker)
    assert deal.status == Status.AWAITING_APPROVAL and sandbox.calls["stripe.payment_intents.capture"] == 0
    with pytest.raises(DealMakerCheckerViolation):
        deal_release_approve(deal_id=deal.pk, approver=maker)
    with pytest.raises(PermissionDenied):
        deal_release_approve(deal_id=deal.pk, approver=buyer)
    deal = deal_release_approve(deal_id=deal.pk, approver=checker)
    assert (deal.status, deal.approved_by, deal.release_requested_by) == (Status.TRANSFERRED, checker, maker)
    assert list(AuditLog.objects.filter(object_id=str(deal.pk)).values_list("action", flat=True).order_by("id")) == [
        "escrow.deal.create", "escrow.deal.release_requested", "escrow.deal.release_approve",
    ]  # fmt: skip


# --- refund and cancel ------------------------------------------------------------------------------------


@pytest.mark.django_db
def test_cancel_before_capture_voids_the_authorization_and_gives_back_the_spend_reservation(sandbox, buyer):
    account = seller(sandbox)
    deal = held_deal(buyer, account, amount_minor=7_000)
    with pytest.raises(PermissionDenied):
        deal_cancel(deal_id=deal.pk, actor=buyer)  # escrow protects the seller too
    deal = deal_cancel(deal_id=deal.pk, actor=account.user, reason="out of stock")

    assert deal.status == Status.REFUNDED and not deal.captured
    assert stripe_state(sandbox).payment_intents[deal.payment_intent_id]["status"] == "canceled"
    assert sandbox.calls["stripe.refunds.create"] == 0
    assert escrow_balances() == {
        "authorized": 0, "held": 0, "payable": 0, "commission": 0, "clearing": 0, "fees": 0,
    }  # fmt: skip
    assert set(postings(deal)) == {"authorize", "void"}
    assert SpendReservation.objects.get(reference=f"escrow:{deal.pk}").released_at is not None
    with pytest.raises(InvalidStateTransition):
        deal_release(deal_id=deal.pk, actor=buyer)
    assert sandbox.calls["stripe.payment_intents.capture"] == 0


@pytest.mark.django_db
def test_a_long_deal_is_captured_into_escrow_and_refunded_after_capture(sandbox, buyer):
    deal = held_deal(buyer, seller(sandbox), amount_minor=25_000, deadline_in=timedelta(days=10))
    assert (deal.status, deal.hold_mode) == (Status.HELD, "captured") and deal.captured
    fee = 755  # 2.9% of 25,000 = 725, plus 30
    assert escrow_balances() == {
        "authorized": 0, "held": 25_000, "payable": 0, "commission": 0, "clearing": 25_000 - fee, "fees": fee,
    }  # fmt: skip
    assert stripe_fee_kept(sandbox, deal.payment_intent_id) == fee

    deal = deal_cancel(deal_id=deal.pk, actor=staff("refund_escrowdeal"))

    assert deal.status == Status.REFUNDED and deal.refund_id.startswith("re_")
    refund = stripe_state(sandbox).refunds[deal.refund_id]
    assert (refund["amount"], refund["payment_intent"]) == (25_000, deal.payment_intent_id)
    # the buyer gets all of it back; Stripe keeps its fee on a refund, so the platform bears it
    assert escrow_balances() == {
        "authorized": 0, "held": 0, "payable": 0, "commission": 0, "clearing": -fee, "fees": fee,
    }  # fmt: skip
    steps = postings(deal)
    assert set(steps) == {"capture", "refund"}
    assert steps["refund"].metadata["provider_reference"] == deal.refund_id
    # money moved and came back: the spend stays counted
    assert SpendReservation.objects.get(reference=f"escrow:{deal.pk}").released_at is None


@pytest.mark.django_db
def test_a_declined_hold_fails_and_gives_back_the_spend_reservation(sandbox, buyer):
    deal = held_deal(buyer, seller(sandbox), payment_method="pm_card_chargeDeclinedInsufficientFunds")
    assert deal.status == Status.FAILED and "insufficient funds" in deal.failure_reason
    assert SpendReservation.objects.get(reference=f"escrow:{deal.pk}").released_at is not None
    assert escrow_balances()["held"] == 0 and not postings(deal)


@pytest.mark.django_db
def test_an_unknown_hold_stays_created_and_the_sweeper_finds_the_one_payment_intent(sandbox, buyer):
    sandbox.add_fault(Fault(operation="stripe.payment_intents.create", kind="error", status=500))
    deal = held_deal(buyer, seller(sandbox))
    hold = movement_latest(operation="escrow.hold", subject_id=deal.pk)
    assert deal.status == Status.CREATED and "unknown" in deal.failure_reason
    assert (hold.key, hold.status) == (f"escrow:{deal.pk}:hold", MoneyMovement.Status.UNKNOWN)
    assert hold.next_sync_at is not None and movements_sweep() == 0  # its next look is not due yet

    MoneyMovement.objects.filter(pk=hold.pk).update(next_sync_at=timezone.now())  # 5 minutes later
    assert movements_sweep() == 1  # Stripe Search may lag up to an hour: an empty answer proves nothing yet
    assert Status.CREATED == EscrowDeal.objects.get(pk=deal.pk).status
    assert sandbox.calls["stripe.payment_intents.create"] == 1 and not stripe_state(sandbox).payment_intents

    an_hour_ago = timezone.now() - timedelta(hours=1, minutes=5)  # the clock moves on past the search lag
    MoneyMovement.objects.filter(pk=hold.pk).update(next_sync_at=timezone.now(), first_sent_at=an_hour_ago)
    assert movements_sweep() == 1  # none carries our key: never made, so the same request goes again
    deal.refresh_from_db()
    assert deal.status == Status.HELD and deal.payment_intent_id
    assert len(stripe_state(sandbox).payment_intents) == 1
    assert ("sk_test_sandbox", f"escrow:{deal.pk}:hold") in stripe_state(sandbox).idempotency
    assert escrow_balances()["held"] == deal.amount_minor  # posted once, by the sweeper's outcome


@pytest.mark.django_db
def test_a_repeated_create_with_the_same_client_key_returns_the_same_deal(sandbox, buyer):
    account = seller(sandbox)
    first = held_deal(buyer, account, client_key="order-7")
    again = held_deal(buyer, account, client_key="order-7")
    assert again.pk == first.pk and sandbox.calls["stripe.payment_intents.create"] == 1


# --- timeouts ------------------------------------------------------------------------------------------


@pytest.mark.django_db
def test_timeouts_refund_or_release_by_policy_after_the_grace(sandbox, buyer):
    account = seller(sandbox, rate_bps=800)
    refund = held_deal(buyer, account, amount_minor=5_000, timeout_policy="refund")
    release = held_deal(buyer, account, amount_minor=10_000, timeout_policy="release")
    within_grace = held_deal(buyer, account, amount_minor=3_000)
    overdue(refund, release)
    overdue(within_grace, by=timedelta(minutes=10))  # grace is 15 minutes

    run = deal_timeouts_run()

    assert (run.processed, run.stopped_by) == (2, "")
    states = dict(EscrowDeal.objects.values_list("pk", "status"))
    assert states == {refund.pk: Status.REFUNDED, release.pk: Status.TRANSFERRED, within_grace.pk: Status.HELD}
    assert EscrowDeal.objects.get(pk=release.pk).timed_out_at is not None
    fee = 320  # on the released 10,000 only (2.9% = 290, plus 30); the refunded one was never captured
    assert escrow_balances() == {
        "authorized": 3_000, "held": 3_000, "payable": 0, "commission": 800, "clearing": 800 - fee, "fees": fee,
    }  # fmt: skip
    assert AuditLog.objects.filter(action="escrow.deal.timeout", actor_repr="system").count() == 2
    assert deal_timeouts_run().processed == 0  # nothing left due


@pytest.mark.django_db
def test_authorizations_near_expiry_are_flagged_once(sandbox, buyer):
    deal = held_deal(buyer, seller(sandbox))
    EscrowDeal.objects.filter(pk=deal.pk).update(authorized_at=timezone.now() - timedelta(days=6, hours=1))
    assert deal_authorizations_flag_expiring() == 1
    assert deal_authorizations_flag_expiring() == 0
    alert = Alert.objects.get(key="escrow:authorizations:expiring")
    assert str(deal.pk) in alert.detail and EscrowDeal.objects.get(pk=deal.pk).authorization_warned_at is not None


# --- transfer failures and retries ------------------------------------------------------------------------


@pytest.mark.django_db
def test_a_refused_transfer_is_retried_under_a_new_key_after_the_account_is_fixed(sandbox, buyer):
    account = seller(sandbox, transfers="inactive")
    deal = deal_release(deal_id=held_deal(buyer, account).pk, actor=buyer)

    assert deal.status == Status.TRANSFER_FAILED and deal.transfer_attempts == 1
    assert "insufficient_capabilities_for_transfer" in deal.failure_reason or "capabilities" in deal.failure_reason
    assert timedelta(minutes=59) < deal.next_transfer_at - timezone.now() <= timedelta(hours=1)
    assert escrow_balances()["payable"] == deal.seller_net_minor  # owed, not paid
    assert deal_transfers_retry_due() == 0  # not due yet

    stripe_sandbox.account_set(sandbox, account.stripe_account_id, transfers="active")
    assert deliver(events(sandbox, "account.updated")[-1]) == "processed"
    account.refresh_from_db()
    assert account.can_receive_transfers
    assert deal_transfers_retry_due() == 1

    deal.refresh_from_db()
    assert deal.status == Status.TRANSFERRED
    (transfer,) = stripe_state(sandbox).transfers.values()
    assert transfer["amount"] == deal.seller_net_minor
    assert sandbox.calls["stripe.transfers.create"] == 2
    assert transfer["metadata"]["idempotency_key"] == f"escrow:{deal.pk}:transfer:2"  # a new attempt, a new key
    assert list(
        MoneyMovement.objects.filter(operation="escrow.transfer", subject_id=deal.pk)
        .order_by("id")
        .values_list("key", "status")
    ) == [(f"escrow:{deal.pk}:transfer", "declined"), (f"escrow:{deal.pk}:transfer:2", "succeeded")]
    assert escrow_balances()["payable"] == 0 and ledger_integrity_report().is_clean


@pytest.mark.django_db
def test_after_the_last_attempt_an_alert_waits_for_a_person(sandbox, buyer, settings):
    settings.ESCROW_TRANSFER_MAX_ATTEMPTS = 3
    account = seller(sandbox, transfers="inactive")
    deal = deal_release(deal_id=held_deal(buyer, account).pk, actor=buyer)
    later = timezone.now() + timedelta(days=1)
    assert deal_transfers_retry_due(now=later) == 1
    assert not Alert.objects.filter(key=f"escrow:deal:{deal.pk}:transfer").exists()
    assert deal_transfers_retry_due(now=later) == 1

    deal.refresh_from_db()
    assert (deal.status, deal.transfer_attempts, deal.next_transfer_at) == (Status.TRANSFER_FAILED, 3, None)
    alert = Alert.objects.get(key=f"escrow:deal:{deal.pk}:transfer", status=Alert.Status.OPEN)
    assert alert.severity == Alert.Severity.CRITICAL and "Retry transfer now" in alert.action_required
    assert deal_transfers_retry_due(now=later + timedelta(days=30)) == 0  # the job has given up

    stripe_sandbox.account_set(sandbox, account.stripe_account_id, transfers="active")
    operator = staff("retry_transfer_escrowdeal")
    deal = deal_transfer_retry(deal_id=deal.pk, actor=operator)
    assert deal.status == Status.TRANSFERRED and len(stripe_state(sandbox).transfers) == 1
    assert AuditLog.objects.filter(action="escrow.deal.transfer_retry", actor=operator).count() == 1
    with pytest.raises(PermissionDenied):
        deal_transfer_retry(deal_id=deal.pk, actor=buyer)


# --- webhooks -----------------------------------------------------------------------------------------------


@pytest.mark.django_db
def test_webhooks_apply_once_in_any_order(sandbox, buyer):
    account = seller(sandbox, rate_bps=800)
    deal = held_deal(buyer, account, amount_minor=10_000)
    sandbox.add_fault(Fault(operation="stripe.transfers.create", kind="applied_then_timeout"))
    deal = deal_release(deal_id=deal.pk, actor=buyer)
    assert deal.status == Status.RELEASED and "unknown" in deal.failure_reason  # sent, answer lost
    (transfer_id,) = stripe_state(sandbox).transfers
    with StripeProviderClient() as stripe:
        stripe.reverse_transfer(transfer_id=transfer_id, idempotency_key="support-case-1", amount_minor=4_000)
    (reversed_event,) = events(sandbox, "transfer.reversed")

    assert deliver(reversed_event) == "failed"  # before the transfer is known: the sweeper applies it later
    for event in events(sandbox, "transfer.created") * 2 + events(sandbox, "payment_intent.succeeded"):
        deliver({**event, "id": f"{event['id']}-{uuid.uuid4().hex[:6]}"})  # redeliveries under new ids, too
    deal.refresh_from_db()
    assert (deal.status, deal.transfer_id) == (Status.TRANSFERRED, transfer_id)
    assert deliver(reversed_event) == "processed"  # the same event again: now it applies
    assert deliver(reversed_event) == "processed"  # stored once, processed once

    deal.refresh_from_db()
    assert (deal.status, deal.reversed_minor) == (Status.REVERSED, 4_000)
    fee = 320  # 2.9% of 10,000 = 290, plus 30
    assert escrow_balances() == {
        "authorized": 0, "held": 0, "payable": 4_000, "commission": 800, "clearing": 4_800 - fee, "fees": fee,
    }  # fmt: skip
    reversal = [k for k in postings(deal) if k.startswith("transfer-reversal:")]
    assert len(reversal) == 1 and postings(deal)[reversal[0]].metadata["provider_reference"].startswith("trr_")
    assert sandbox.calls["stripe.transfers.create"] == 1
    assert Alert.objects.filter(key=f"escrow:deal:{deal.pk}:reversed").exists()
    assert ledger_integrity_report().is_clean


@pytest.mark.django_db
def test_account_updates_apply_forward_only_and_foreign_objects_are_ignored(sandbox, buyer):
    account = seller(sandbox, transfers="inactive")
    stripe_sandbox.account_set(sandbox, account.stripe_account_id, transfers="active")
    older, newer = events(sandbox, "account.updated")[-2:]
    newer = {**newer, "created": older["created"] + 10}
    assert deliver(newer) == "processed"
    assert deliver(older) == "processed"  # older: changes nothing
    account.refresh_from_db()
    assert account.can_receive_transfers

    with StripeProviderClient() as stripe:  # not escrow's: no escrow_deal metadata, no id we know
        stripe.create_payment_intent(amount_minor=500, currency="USD", payment_method="pm_card_visa",
                                     idempotency_key="shop-1", capture="automatic")  # fmt: skip
    assert deliver(events(sandbox, "payment_intent.succeeded")[-1]) == "processed"
    assert not EscrowDeal.objects.exists() and escrow_balances()["clearing"] == escrow_balances()["fees"] == 0


@pytest.mark.django_db
def test_a_lapsed_authorization_expires_the_deal_without_moving_money(sandbox, buyer):
    deal = held_deal(buyer, seller(sandbox), amount_minor=4_000)
    with StripeProviderClient() as stripe:  # Stripe voids an authorization after about 7 days
        stripe.cancel(payment_intent_id=deal.payment_intent_id, idempotency_key="stripe-auto-expiry")
    deliver(events(sandbox, "payment_intent.canceled")[-1])
    deal.refresh_from_db()
    assert deal.status == Status.EXPIRED
    assert escrow_balances()["held"] == 0 and escrow_balances()["authorized"] == 0
    assert SpendReservation.objects.get(reference=f"escrow:{deal.pk}").released_at is not None


@pytest.mark.django_db
def test_an_unknown_deal_is_not_found(sandbox, buyer):
    with pytest.raises(NotFound):
        deal_release(deal_id=987654, actor=buyer)


@pytest.mark.django_db
def test_a_deal_captured_into_escrow_is_released_without_a_second_capture(sandbox, buyer):
    deal = held_deal(buyer, seller(sandbox, rate_bps=800), amount_minor=20_000, deadline_in=timedelta(days=9))
    deal = deal_release(deal_id=deal.pk, actor=buyer)
    assert deal.status == Status.TRANSFERRED and sandbox.calls["stripe.payment_intents.capture"] == 0
    fee = 610  # 2.9% of 20,000 = 580, plus 30: posted once, with the capture at hold time
    assert escrow_balances() == {
        "authorized": 0, "held": 0, "payable": 0, "commission": 1_600, "clearing": 1_600 - fee, "fees": fee,
    }  # fmt: skip
    assert set(postings(deal)) == {"capture", "release", "transfer"}


@pytest.mark.django_db
def test_the_beat_tasks_run_the_jobs(sandbox, buyer):
    from escrow.tasks import apply_deal_timeouts_task, retry_deal_transfers_task
    from providers.tasks import sweep_money_movements_task

    overdue(held_deal(buyer, seller(sandbox)))
    assert apply_deal_timeouts_task.delay().get() == {
        "processed": 1, "failed": 0, "skipped": 0, "oversized": 0, "stopped_by": "",
    }  # fmt: skip
    assert retry_deal_transfers_task.delay().get() == 0
    assert sweep_money_movements_task.delay().get() == 0  # nothing left open: the void was answered


@pytest.mark.django_db
def test_a_transfer_that_fails_after_it_was_made_puts_the_money_back_in_seller_payable(sandbox, buyer):
    deal = deal_release(deal_id=held_deal(buyer, seller(sandbox, rate_bps=800), amount_minor=10_000).pk, actor=buyer)
    (created,) = events(sandbox, "transfer.created")
    failed = {**created, "id": f"evt_{uuid.uuid4().hex}", "type": "transfer.failed"}
    assert deliver(failed) == "processed" and deliver({**failed, "id": f"evt_{uuid.uuid4().hex}"}) == "processed"
    deal.refresh_from_db()
    assert (deal.status, deal.reversed_minor) == (Status.REVERSED, 9_200)
    fee = 320  # 2.9% of 10,000 = 290, plus 30
    assert escrow_balances() == {
        "authorized": 0, "held": 0, "payable": 9_200, "commission": 800, "clearing": 10_000 - fee, "fees": fee,
    }  # fmt: skip
    assert postings(deal)["transfer-failed"].metadata["provider_reference"] == deal.transfer_id
    assert ledger_integrity_report().is_clean


@pytest.mark.django_db
def test_a_hold_whose_answer_was_lost_fails_by_webhook_when_the_card_was_declined(sandbox, buyer):
    sandbox.add_fault(Fault(operation="stripe.payment_intents.create", kind="applied_then_timeout"))
    deal = held_deal(buyer, seller(sandbox), payment_method="pm_card_chargeDeclined")
    assert deal.status == Status.CREATED  # the card was declined at Stripe, but we did not hear it
    assert deliver(events(sandbox, "payment_intent.payment_failed")[-1]) == "processed"
    deal.refresh_from_db()
    assert deal.status == Status.FAILED and "declined" in deal.failure_reason
    assert SpendReservation.objects.get(reference=f"escrow:{deal.pk}").released_at is not None
