"""core.labels: every state of every model staff see has words, unknown outcomes say when they are checked
again, and the states that need a person say why and what to do; the changelists show them."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from django.contrib.auth.models import User
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from core.labels import LABELS, label_of, state_help, status_label
from core.models import Alert
from escrow.models import EscrowDeal, Purchase, PurchaseRefund
from monitoring.models import ReconciliationIssue
from payouts.models import PayoutBatch, PayoutItem
from providers.models import MoneyMovement, Payment, PaymentAttempt, Refund
from tests.dashboard import seed

NOON = datetime(2026, 3, 9, 13, 0, tzinfo=UTC)

MODELS = (Payment, PaymentAttempt, Refund, MoneyMovement, PayoutBatch, PayoutItem, EscrowDeal, Purchase, PurchaseRefund,
          Alert, ReconciliationIssue)  # fmt: skip


@pytest.mark.parametrize("model", MODELS, ids=lambda model: model._meta.label_lower)
def test_every_status_of_every_model_staff_see_has_a_label(model):
    statuses = model._meta.get_field("status").choices
    assert {value for value, _ in statuses} == set(LABELS[model._meta.label_lower])


def test_batches_and_items_are_labelled_with_their_provider():
    batch = PayoutBatch(provider="paypal", status="prepared")
    assert status_label(batch) == "Waiting for approval"
    assert status_label(batch, status="submitted") == "Sent to PayPal"
    assert status_label(PayoutBatch(provider="stripe", status="submitting")) == "Sending to Stripe"
    assert status_label(PayoutItem(batch=batch, status="PENDING")) == "Sent to PayPal"
    assert status_label(PayoutItem(batch=batch, status="UNCLAIMED")) == "Unclaimed by recipient"
    assert status_label(PayoutItem(batch=batch, status="NEW")) == "Preparing"
    assert label_of("payouts.payoutitem", "ONHOLD", provider="paypal") == "On hold at PayPal"
    assert label_of("payouts.payoutitem", "SOMETHING_NEW") == "Something new"  # nothing is hidden


def test_an_open_provider_call_says_when_the_sweeper_looks_again():
    unknown = MoneyMovement(provider="paypal", status="unknown", next_sync_at=NOON.replace(hour=14, minute=5))
    assert status_label(unknown, now=NOON) == "Outcome unknown, checking again at 14:05 UTC"
    waiting = MoneyMovement(provider="paypal", status="waiting", next_sync_at=NOON + timedelta(days=1, minutes=5))
    assert status_label(waiting, now=NOON) == "Sent to PayPal, checking again at 10 Mar 13:05 UTC"
    overdue = MoneyMovement(provider="stripe", status="pending", next_sync_at=NOON - timedelta(minutes=1))
    assert status_label(overdue, now=NOON) == "Sending to Stripe, checking again now"
    escalated = MoneyMovement(provider="stripe", status="unknown", next_sync_at=None, escalated_at=NOON)
    assert status_label(escalated, now=NOON) == "Outcome unknown, checks ran out, a person must look it up"
    assert status_label(MoneyMovement(provider="maya", status="declined")) == "Declined by Maya"
    assert status_label(Payment(provider="gcash", status="unknown")) == "Outcome unknown, being checked"


def test_a_refused_transfer_says_when_it_is_tried_again():
    retry_at = timezone.now() + timedelta(hours=2)
    deal = EscrowDeal(status="transfer_failed", next_transfer_at=retry_at, failure_reason="account_closed")
    assert status_label(deal) == f"Transfer refused, retrying at {timezone.localtime(retry_at):%H:%M} UTC"
    assert status_label(EscrowDeal(status="transfer_failed")) == "Transfer refused, no retry left, needs a person"
    found = state_help(deal)
    assert found is not None and found.user_message == "Stripe refused the transfer to the seller: account_closed."
    assert "Retry transfer now" in found.action_required


def test_failed_items_say_what_happened_and_what_to_do():
    batch = PayoutBatch(provider="paypal", status="completed")
    failed = state_help(PayoutItem(batch=batch, status="FAILED", error="RECEIVER_ACCOUNT_LOCKED"))
    assert failed is not None
    assert failed.user_message == "PayPal could not pay this winner: RECEIVER_ACCOUNT_LOCKED."
    assert failed.action_required == (
        "Check the recipient's details with the winner, then run 'Retry the failed items' on the batch: the winner "
        "is paid in a new batch."
    )
    returned = state_help(PayoutItem(batch=batch, status="RETURNED"))
    assert returned is not None and returned.user_message == "The payout came back unpaid."
    unclaimed = state_help(PayoutItem(batch=batch, status="UNCLAIMED"))
    assert unclaimed is not None and "After 25 days, cancel it" in unclaimed.action_required
    assert state_help(PayoutItem(batch=batch, status="SUCCESS")) is None
    declined = state_help(Payment(provider="maya", status="failed", failure_reason="card_declined"))
    assert declined is not None and declined.user_message == "The payment was not taken: card_declined."
    ran_out = state_help(MoneyMovement(provider="stripe", status="waiting", escalated_at=NOON))
    assert ran_out is not None and ran_out.action_required.startswith("Look it up at Stripe by our key")


@pytest.mark.django_db
def test_changelists_show_the_labels_and_what_to_do(admin_client: Client):
    batch = seed.batch_with_items("UNCLAIMED", "FAILED", errors={1: "RECEIVER_ACCOUNT_LOCKED"}, status="completed")
    items = admin_client.get(reverse("admin:payouts_payoutitem_changelist")).content.decode()
    assert "Unclaimed by recipient" in items and "PayPal could not pay this winner: RECEIVER_ACCOUNT_LOCKED." in items
    batches = admin_client.get(reverse("admin:payouts_payoutbatch_changelist")).content.decode()
    assert "Completed" in batches and "Unclaimed by recipient 1 · $100.00, Failed 1 · $200.00" in batches
    Payment.objects.create(
        reference="pay_1", user=User.objects.create_user("payer"), client_key="k", amount_minor=1_000, currency="USD",
        status="unknown", provider="stripe",
    )  # fmt: skip
    assert "Outcome unknown, being checked" in admin_client.get(reverse("admin:providers_payment_changelist")).text
    later = timezone.now() + timedelta(minutes=30)
    seed.movement("payout.paypal_batch", batch.pk, "waiting", next_sync_at=later)
    movements = admin_client.get(reverse("admin:providers_moneymovement_changelist")).text
    assert f"Sent to PayPal, checking again at {timezone.localtime(later):%H:%M} UTC" in movements
    seed.deal("transfer_failed", failure_reason="account_closed")
    assert "Transfer refused, no retry left" in admin_client.get(reverse("admin:escrow_escrowdeal_changelist")).text
    seed.purchase("capture_unknown")
    assert "Charge outcome unknown" in admin_client.get(reverse("admin:escrow_purchase_changelist")).text
