"""Payouts on the money-moving protocol, with faults injected at the sandbox over real HTTP.

Each case drives the real clients through the engine (batch_execute, then `movements_sweep` as beat would) and
asserts what moved at the sandbox, the batch and item statuses, and the ledger.
"""

import uuid
from datetime import timedelta

import pytest
from django.contrib.auth.models import Permission
from django.utils import timezone

from core.errors import InvalidRequest
from core.models import Alert
from core.money import Money
from ledger.integrity import ledger_integrity_report
from ledger.models import Account, Hold
from ledger.selectors import account_balance
from payouts.models import PayoutBatch, PayoutCycle, PayoutItem, WinnerSelection
from payouts.services import (
    batch_execute,
    batch_retry_failed,
    batch_sync,
    batches_followed,
    batches_sync_due,
    cycle_disburse,
    cycle_prepare,
    items_cancel_unclaimed_due,
    winnings_fund,
)
from payouts.webhooks import payout_batch_changed
from providers.models import MoneyMovement
from providers.protocol import SYNC_SCHEDULE, movements_sweep
from providers.sandbox import stripe as stripe_sandbox
from providers.sandbox.paypal import paypal_sandbox
from providers.sandbox.server import Fault

PAYABLE = "payouts:winnings-payable:USD"
FUND = 1_000_000
RECEIVERS = ("paid@example.com", "unclaimed@example.com", "fail@example.com", "return@example.com")
DUPLICATE_WITHOUT_LINK = {
    "name": "USER_BUSINESS_ERROR",
    "message": "User business error.",
    "details": [{"field": "SENDER_BATCH_ID", "issue": "Batch with given sender_batch_id already exists"}],
    "links": [],
}
# Every way PayPal may refuse the re-send of a batch whose first send was applied and timed out.
PAYPAL_RESEND_REFUSALS = {
    "503": Fault(operation="paypal.payouts.create", kind="error", status=503),
    "429": Fault(operation="paypal.payouts.create", kind="error", status=429, body={"name": "RATE_LIMIT_REACHED"}),
    "400": Fault(operation="paypal.payouts.create", kind="error", status=400, body={"name": "VALIDATION_ERROR"}),
    "duplicate-without-link": Fault(
        operation="paypal.payouts.create", kind="error", status=400, body=DUPLICATE_WITHOUT_LINK
    ),
    "reset": Fault(operation="paypal.payouts.create", kind="reset"),
}
# And Stripe's refusals of a transfer's keyed re-send (the engine's retry loop, same key).
STRIPE_RESEND_REFUSALS = {
    "503": Fault(operation="stripe.transfers.create", kind="error", status=503),
    "429": Fault(
        operation="stripe.transfers.create",
        kind="error",
        status=429,
        body={"error": {"type": "invalid_request_error", "code": "rate_limit", "message": "Too many requests"}},
    ),
    "400-idempotency": Fault(
        operation="stripe.transfers.create",
        kind="error",
        status=400,
        body={"error": {"type": "idempotency_error", "message": "Keys for idempotent requests can only be used..."}},
    ),
}


@pytest.fixture(autouse=True)
def _settings(settings):
    settings.PROVIDER_STATE_KEY_PREFIX = f"test:payouts-protocol:{uuid.uuid4().hex}"
    settings.PROVIDER_RETRY_ATTEMPTS = 1
    settings.PROVIDER_RETRY_BASE_DELAY_SECONDS = 0
    settings.PROVIDER_BREAKER_DEFAULTS = {**settings.PROVIDER_BREAKER_DEFAULTS, "failure_threshold": 50}


@pytest.fixture
def operator(django_user_model):
    user = django_user_model.objects.create_user("operator", is_staff=True)
    codenames = ("prepare_payoutbatch", "approve_payoutbatch", "execute_payoutbatch")
    user.user_permissions.set(Permission.objects.filter(codename__in=codenames))
    return django_user_model.objects.get(pk=user.pk)


def make_cycle(django_user_model, receivers=RECEIVERS, recipient_type="EMAIL") -> PayoutCycle:
    cycle = PayoutCycle.objects.create(name="November")
    for n, receiver in enumerate(receivers):
        WinnerSelection.objects.create(
            cycle=cycle, user=django_user_model.objects.create_user(f"winner-{n}"), amount_minor=10_000 * (n + 1),
            currency="USD", recipient_type=recipient_type, recipient=receiver,
        )  # fmt: skip
    winnings_fund(amount=Money(FUND, "USD"), reference=f"pool-{cycle.pk}")
    return cycle


def posted(code: str) -> int:
    return account_balance(Account.objects.get(code=code)).posted.minor


def available(code: str) -> int:
    return account_balance(Account.objects.get(code=code)).available.minor


def movement_of(operation: str, subject_id: int) -> MoneyMovement:
    return MoneyMovement.objects.get(operation=operation, subject_id=subject_id)


def sweep_now(movement: MoneyMovement, **fields) -> int:
    """What the beat job does once the movement's next look is due."""
    MoneyMovement.objects.filter(pk=movement.pk).update(next_sync_at=timezone.now(), **fields)
    return movements_sweep()


def item_statuses(batch: PayoutBatch) -> dict[str, str]:
    return {item.receiver.split("@")[0]: item.status for item in batch.items.all()}


# --- PayPal batch create ----------------------------------------------------------------------


@pytest.mark.django_db
@pytest.mark.parametrize("refusal", PAYPAL_RESEND_REFUSALS.values(), ids=PAYPAL_RESEND_REFUSALS.keys())
def test_a_refused_resend_of_an_applied_batch_never_denies_it_and_the_sweeper_finds_it(
    sandbox, django_user_model, operator, refusal
):
    cycle = make_cycle(django_user_model)
    sandbox.add_fault(Fault(operation="paypal.payouts.create", kind="applied_then_timeout"))
    (batch,) = cycle_prepare(cycle_id=cycle.pk, actor=operator)
    batch = batch_execute(batch_id=batch.pk, actor=operator)
    movement = movement_of("payout.paypal_batch", batch.pk)
    assert (batch.status, movement.status, movement.key) == ("submitting", "unknown", batch.sender_batch_id)
    assert len(paypal_sandbox(sandbox).batches) == 1  # PayPal has it; we do not know

    sandbox.add_fault(refusal)
    assert sweep_now(movement) == 1  # the same sender_batch_id again (inside PayPal's window): refused
    batch.refresh_from_db()
    movement.refresh_from_db()
    assert (batch.status, movement.status) == ("submitting", "unknown")
    assert set(item_statuses(batch).values()) == {"NEW"}  # never DENIED: no hold was released
    assert available(PAYABLE) == FUND - 100_000
    with pytest.raises(InvalidRequest):  # and no retry batch can pay these winners under a new id
        batch_retry_failed(batch_id=batch.pk, actor=operator)
    assert sandbox.calls["paypal.payouts.create"] == 2

    assert sweep_now(movement) == 1  # the next look: PayPal names the batch it has
    batch.refresh_from_db()
    (paypal_batch_id,) = paypal_sandbox(sandbox).batches  # still exactly one batch at PayPal
    assert (batch.status, batch.provider_batch_id) == ("submitted", paypal_batch_id)
    assert movement_of("payout.paypal_batch", batch.pk).status == "succeeded"
    assert PayoutBatch.objects.count() == 1
    for _ in range(3):
        sandbox.tick()
    batch = batch_sync(batch_id=batch.pk)
    assert item_statuses(batch) == {"paid": "SUCCESS", "unclaimed": "UNCLAIMED", "fail": "FAILED", "return": "RETURNED"}
    assert posted(PAYABLE) == FUND - 10_000
    assert ledger_integrity_report().findings == []


@pytest.mark.django_db
def test_past_paypals_window_nothing_is_sent_and_the_movement_escalates(sandbox, django_user_model, operator):
    cycle = make_cycle(django_user_model)
    sandbox.add_fault(Fault(operation="paypal.payouts.create", kind="applied_then_timeout"))
    (batch,) = cycle_disburse(cycle_id=cycle.pk, actor=operator)
    movement = movement_of("payout.paypal_batch", batch.pk)

    sweep_now(movement, first_sent_at=timezone.now() - timedelta(days=30))
    assert sandbox.calls["paypal.payouts.create"] == 1  # nothing re-sent: PayPal may have forgotten the id
    movement.refresh_from_db()
    assert movement.status == "unknown" and "outside its key window" in movement.failure_reason

    sweep_now(movement, sync_attempts=len(SYNC_SCHEDULE))
    movement.refresh_from_db()
    assert movement.escalated_at is not None and movement.next_sync_at is None
    alert = Alert.objects.get(key=f"movement:{movement.key}", status=Alert.Status.OPEN)
    assert batch.sender_batch_id in alert.action_required
    assert sandbox.calls["paypal.payouts.create"] == 1
    batch.refresh_from_db()
    assert batch.status == "submitting" and set(item_statuses(batch).values()) == {"NEW"}


@pytest.mark.django_db
def test_only_a_refused_first_send_denies_the_batch_and_releases_its_holds(sandbox, django_user_model, operator):
    cycle = make_cycle(django_user_model)
    sandbox.add_fault(
        Fault(operation="paypal.payouts.create", kind="error", status=400, body={"name": "VALIDATION_ERROR"})
    )
    (batch,) = cycle_disburse(cycle_id=cycle.pk, actor=operator)
    assert batch.status == "denied" and "VALIDATION_ERROR" in batch.failure_reason
    assert set(item_statuses(batch).values()) == {"DENIED"}
    assert available(PAYABLE) == FUND  # every hold released: known not paid
    assert paypal_sandbox(sandbox).batches == {}

    (retry,) = batch_retry_failed(batch_id=batch.pk, actor=operator)  # known not sent: a new id may pay them
    retry = batch_execute(batch_id=retry.pk, actor=operator)
    assert retry.status == "submitted" and retry.sender_batch_id != batch.sender_batch_id
    assert len(paypal_sandbox(sandbox).batches) == 1


@pytest.mark.django_db
def test_a_batch_webhook_resolves_an_unknown_create(sandbox, django_user_model, operator):
    cycle = make_cycle(django_user_model)
    sandbox.add_fault(Fault(operation="paypal.payouts.create", kind="applied_then_timeout"))
    (batch,) = cycle_disburse(cycle_id=cycle.pk, actor=operator)
    assert batch.status == "submitting"
    sandbox.tick()  # PayPal starts processing and says so
    (event,) = [e for e in paypal_sandbox(sandbox).sent_events if e["event_type"] == "PAYMENT.PAYOUTSBATCH.PROCESSING"]

    payout_batch_changed(None, event)

    batch.refresh_from_db()
    assert (batch.status, batch.provider_batch_id) == (
        "submitted",
        event["resource"]["batch_header"]["payout_batch_id"],
    )
    assert movement_of("payout.paypal_batch", batch.pk).status == "succeeded"
    assert set(item_statuses(batch).values()) == {"PENDING"}
    assert movements_sweep() == 0 and sandbox.calls["paypal.payouts.create"] == 1


# --- Stripe transfers -------------------------------------------------------------------------


@pytest.mark.django_db
@pytest.mark.parametrize("refusal", STRIPE_RESEND_REFUSALS.values(), ids=STRIPE_RESEND_REFUSALS.keys())
def test_a_refused_resend_of_an_applied_transfer_never_fails_the_item(
    sandbox, django_user_model, operator, settings, refusal
):
    settings.PROVIDER_RETRY_ATTEMPTS = 2  # the engine's retry loop re-sends the keyed transfer at once
    cycle = make_cycle(django_user_model, receivers=["acct_1SellerXYZ"], recipient_type="STRIPE_ACCOUNT")
    sandbox.add_fault(Fault(operation="stripe.transfers.create", kind="applied_then_timeout"))
    sandbox.add_fault(refusal)
    (batch,) = cycle_disburse(cycle_id=cycle.pk, actor=operator)
    (item,) = batch.items.all()
    movement = movement_of("payout.stripe_transfer", item.pk)
    assert (movement.status, movement.key) == ("unknown", f"payout-item:{item.pk}:transfer")
    assert (batch.status, item.status) == ("submitting", "NEW")  # never FAILED
    assert sandbox.calls["stripe.transfers.create"] == 2
    assert len(stripe_sandbox.state_of(sandbox).transfers) == 1

    sandbox.add_fault(Fault(operation="stripe.transfers.list", kind="error", status=503, times=2))
    sweep_now(movement)  # the look-up cannot answer: nothing is sent
    item.refresh_from_db()
    assert item.status == "NEW" and sandbox.calls["stripe.transfers.create"] == 2

    sweep_now(movement)  # the look-up finds the transfer made under our key
    item.refresh_from_db()
    batch.refresh_from_db()
    (transfer,) = stripe_sandbox.state_of(sandbox).transfers.values()  # exactly one transfer
    assert (item.status, item.provider_item_id, batch.status) == ("SUCCESS", transfer["id"], "completed")
    assert sandbox.calls["stripe.transfers.create"] == 2  # never sent again after the unknown
    assert posted("provider:stripe:clearing:USD") == -10_000 == -transfer["amount"]
    assert Hold.objects.get(pk=item.hold_id).posted_transaction.metadata["provider_reference"] == transfer["id"]
    assert ledger_integrity_report().findings == []


@pytest.mark.django_db
def test_a_transfer_stripe_never_made_is_sent_once_under_the_same_key(sandbox, django_user_model, operator):
    cycle = make_cycle(django_user_model, receivers=["acct_1SellerXYZ"], recipient_type="STRIPE_ACCOUNT")
    sandbox.add_fault(Fault(operation="stripe.transfers.create", kind="timeout"))  # lost, never applied
    (batch,) = cycle_disburse(cycle_id=cycle.pk, actor=operator)
    (item,) = batch.items.all()
    movement = movement_of("payout.stripe_transfer", item.pk)
    assert movement.status == "unknown" and stripe_sandbox.state_of(sandbox).transfers == {}

    sweep_now(movement)  # the look-up says Stripe has none: sent again, same key
    (transfer,) = stripe_sandbox.state_of(sandbox).transfers.values()
    assert transfer["metadata"]["idempotency_key"] == movement.key
    item.refresh_from_db()
    assert item.status == "SUCCESS" and sandbox.calls["stripe.transfers.create"] == 2


# --- unclaimed items --------------------------------------------------------------------------


def settled_batch(sandbox, django_user_model, operator) -> PayoutBatch:
    (batch,) = cycle_disburse(cycle_id=make_cycle(django_user_model).pk, actor=operator)
    for _ in range(3):
        sandbox.tick()
    return batch_sync(batch_id=batch.pk)


@pytest.mark.django_db
def test_the_job_cancels_an_item_unclaimed_for_the_configured_days_once(sandbox, django_user_model, operator, settings):
    settings.PAYOUT_UNCLAIMED_CANCEL_AFTER_DAYS = 25
    batch = settled_batch(sandbox, django_user_model, operator)
    item = batch.items.get(status="UNCLAIMED")
    assert batch.status == "completed" and batch in batches_followed()  # completed, and still followed
    assert items_cancel_unclaimed_due() == 0  # too early
    PayoutItem.objects.filter(pk=item.pk).update(updated_at=timezone.now() - timedelta(days=24))
    assert items_cancel_unclaimed_due() == 0
    assert sandbox.calls["paypal.payouts_item.cancel"] == 0
    reserved = available(PAYABLE)

    PayoutItem.objects.filter(pk=item.pk).update(updated_at=timezone.now() - timedelta(days=26))
    assert items_cancel_unclaimed_due() == 1

    item.refresh_from_db()
    assert item.status == "RETURNED"
    assert available(PAYABLE) == reserved + 20_000  # its hold is released
    assert movement_of("payout.cancel_unclaimed", item.pk).status == "succeeded"
    assert items_cancel_unclaimed_due() == 0 and movements_sweep() == 0
    batches_sync_due()  # following the batch's items agrees with the cancel
    item.refresh_from_db()
    assert item.status == "RETURNED" and sandbox.calls["paypal.payouts_item.cancel"] == 1
    assert ledger_integrity_report().findings == []


@pytest.mark.django_db
def test_a_cancel_with_a_lost_answer_is_never_repeated_blindly(sandbox, django_user_model, operator, settings):
    settings.PAYOUT_UNCLAIMED_CANCEL_AFTER_DAYS = 25
    settings.PROVIDER_RETRY_ATTEMPTS = 3  # the engine's retry loop must still not repeat a keyless cancel
    batch = settled_batch(sandbox, django_user_model, operator)
    item = batch.items.get(status="UNCLAIMED")
    PayoutItem.objects.filter(pk=item.pk).update(updated_at=timezone.now() - timedelta(days=26))
    sandbox.add_fault(Fault(operation="paypal.payouts_item.cancel", kind="applied_then_timeout"))

    assert items_cancel_unclaimed_due() == 1
    movement = movement_of("payout.cancel_unclaimed", item.pk)
    item.refresh_from_db()
    assert (movement.status, item.status) == ("unknown", "UNCLAIMED")
    assert sandbox.calls["paypal.payouts_item.cancel"] == 1
    assert items_cancel_unclaimed_due() == 0  # an open cancel blocks another

    sweep_now(movement)  # the look-up: PayPal shows the item RETURNED
    item.refresh_from_db()
    assert item.status == "RETURNED" and movement_of("payout.cancel_unclaimed", item.pk).status == "succeeded"
    assert sandbox.calls["paypal.payouts_item.cancel"] == 1
    assert ledger_integrity_report().findings == []


# --- following items after the batch completed -----------------------------------------------


@pytest.mark.django_db
@pytest.mark.parametrize("receivers", [RECEIVERS, ("return@example.com",)], ids=["by-page", "by-item"])
def test_an_item_returned_after_its_batch_completed_is_followed_and_reversed(
    sandbox, django_user_model, operator, receivers
):
    (batch,) = cycle_disburse(cycle_id=make_cycle(django_user_model, receivers=receivers).pk, actor=operator)
    sandbox.tick()
    sandbox.tick()  # every item has its first status; "return" is paid and the batch is SUCCESS at PayPal
    batch = batch_sync(batch_id=batch.pk)
    returned = batch.items.get(receiver="return@example.com")
    assert (batch.status, returned.status) == ("completed", "SUCCESS")
    amount = returned.amount_minor
    paid_before = posted(PAYABLE)
    assert Hold.objects.get(pk=returned.hold_id).posted_transaction is not None

    sandbox.tick()  # PayPal returns the money after the batch completed
    assert batches_sync_due() == 1  # the beat job still follows the completed batch

    returned.refresh_from_db()
    assert returned.status == "RETURNED"
    assert posted(PAYABLE) == paid_before + amount  # the posting is reversed: the money is owed again
    batch.refresh_from_db()
    assert batch.status == "completed"
    assert ledger_integrity_report().findings == []
    if len(receivers) == 1:  # nothing left to follow
        assert not batches_followed().filter(pk=batch.pk).exists()
