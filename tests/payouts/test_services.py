"""Payout cycles end to end against the PayPal sandbox over real HTTP."""

import threading
import uuid

import pytest
from django.db import connections
from django.utils import timezone

from core.errors import AppError, Conflict, InvalidRequest
from ledger.integrity import ledger_integrity_report
from ledger.models import Hold
from payouts.models import PayoutBatch, PayoutItem, WinnerSelection
from payouts.services import (
    MakerCheckerViolation,
    batch_approve,
    batch_execute,
    batch_retry_failed,
    batch_sync,
    cycle_disburse,
    cycle_prepare,
    sender_batch_id,
)
from providers.models import MoneyMovement
from providers.protocol import movements_sweep
from providers.sandbox import paypal as paypal_sandbox
from providers.sandbox.server import Fault
from tests.payouts.cycles import available, posted, staff, statuses


@pytest.fixture(autouse=True)
def _settings(settings):
    settings.PROVIDER_STATE_KEY_PREFIX = f"test:payouts:{uuid.uuid4().hex}"
    settings.PROVIDER_RETRY_ATTEMPTS = 1


@pytest.mark.django_db
def test_a_cycle_is_paid_once_with_every_item_final_and_the_ledger_in_step(sandbox, cycle, operator):
    (batch,) = cycle_prepare(cycle_id=cycle.pk, actor=operator)
    assert batch.sender_batch_id == sender_batch_id(cycle.pk, batch.checksum)
    assert (batch.status, batch.total_minor, batch.item_count) == ("approved", 100_000, 4)
    assert available("payouts:winnings-payable:USD") == 1_000_000 - 100_000  # reserved by holds
    assert [b.pk for b in cycle_prepare(cycle_id=cycle.pk, actor=operator)] == [batch.pk]  # same content, same batch

    batch = batch_execute(batch_id=batch.pk, actor=operator)
    assert batch.status == "submitted" and batch.provider_batch_id
    for _ in range(3):
        sandbox.tick()
    batch = batch_sync(batch_id=batch.pk)
    assert statuses(batch) == {"paid": "SUCCESS", "unclaimed": "UNCLAIMED", "fail": "FAILED", "return": "RETURNED"}
    assert batch.status == "completed"
    # paid 10,000; returned 40,000 was posted then reversed; failed 30,000 released; unclaimed 20,000 still held
    assert posted("payouts:winnings-payable:USD") == 1_000_000 - 10_000
    assert available("payouts:winnings-payable:USD") == 1_000_000 - 10_000 - 20_000
    assert sandbox.calls["paypal.payouts.create"] == 1
    assert ledger_integrity_report().findings == []


@pytest.mark.django_db
def test_retry_pays_only_the_unpaid_under_a_new_deterministic_id(sandbox, cycle, operator):
    (batch,) = cycle_disburse(cycle_id=cycle.pk, actor=operator)
    for _ in range(3):
        sandbox.tick()
    batch_sync(batch_id=batch.pk)
    (retry,) = batch_retry_failed(batch_id=batch.pk, actor=operator)
    assert retry.sender_batch_id != batch.sender_batch_id and retry.retry_of_id == batch.pk
    assert sorted(i.receiver for i in retry.items.all()) == ["fail@example.com", "return@example.com"]
    assert [b.pk for b in batch_retry_failed(batch_id=batch.pk, actor=operator)] == [retry.pk]  # idempotent
    batch_execute(batch_id=retry.pk, actor=operator)
    with pytest.raises(InvalidRequest):  # those winners are being paid: nothing left to retry
        batch_retry_failed(batch_id=batch.pk, actor=operator)
    for selection in WinnerSelection.objects.all():
        assert selection.items.filter(status__in=PayoutItem.LIVE).count() <= 1


@pytest.mark.django_db
def test_other_content_while_a_batch_is_active_is_a_conflict(sandbox, cycle, operator, django_user_model):
    cycle_prepare(cycle_id=cycle.pk, actor=operator)
    WinnerSelection.objects.create(
        cycle=cycle, user=django_user_model.objects.create_user("late"), amount_minor=500, currency="USD",
        recipient_type="EMAIL", recipient="late@example.com",
    )  # fmt: skip
    with pytest.raises(Conflict) as error:
        cycle_prepare(cycle_id=cycle.pk, actor=operator)
    assert error.value.http_status == 409 and error.value.action_required


@pytest.mark.django_db
def test_invalid_winners_prepare_nothing(sandbox, cycle, operator):
    WinnerSelection.objects.filter(recipient="fail@example.com").update(recipient="not-an-email")
    with pytest.raises(InvalidRequest) as error:
        cycle_prepare(cycle_id=cycle.pk, actor=operator)
    assert len(error.value.details["problems"]) == 1
    assert not PayoutBatch.objects.exists()


@pytest.mark.django_db
def test_large_batches_need_a_second_approver(sandbox, cycle, operator, django_user_model, settings):
    settings.PAYOUT_APPROVAL_THRESHOLD_MINOR = 50_000
    (batch,) = cycle_prepare(cycle_id=cycle.pk, actor=operator)
    assert batch.status == "prepared"
    with pytest.raises(MakerCheckerViolation):
        batch_approve(batch_id=batch.pk, approver=operator)
    with pytest.raises(AppError):
        batch_execute(batch_id=batch.pk, actor=operator)
    approved = batch_approve(batch_id=batch.pk, approver=staff(django_user_model, "approver"))
    assert approved.status == "approved"
    assert batch_execute(batch_id=batch.pk, actor=operator).status == "submitted"


@pytest.mark.django_db
def test_a_crash_after_paypal_accepted_ends_with_one_batch_after_sync(sandbox, cycle, operator):
    sandbox.add_fault(Fault(operation="paypal.payouts.create", kind="applied_then_timeout"))
    (batch,) = cycle_prepare(cycle_id=cycle.pk, actor=operator)
    batch = batch_execute(batch_id=batch.pk, actor=operator)
    assert batch.status == "submitting"  # while its money movement is open
    assert set(statuses(batch).values()) == {"NEW"}
    movement = MoneyMovement.objects.get(operation="payout.paypal_batch", subject_id=batch.pk)
    assert (movement.status, movement.key) == ("unknown", batch.sender_batch_id)
    assert batch_sync(batch_id=batch.pk).status == "submitting"  # following items never resolves a send
    MoneyMovement.objects.filter(pk=movement.pk).update(next_sync_at=timezone.now())
    assert movements_sweep() == 1  # the same sender_batch_id again: PayPal names the batch it has
    batch.refresh_from_db()
    assert batch.status == "submitted"
    assert list(paypal_sandbox.paypal_sandbox(sandbox).batches) == [batch.provider_batch_id]  # exactly one
    for _ in range(3):
        sandbox.tick()
    assert statuses(batch_sync(batch_id=batch.pk))["paid"] == "SUCCESS"


@pytest.mark.django_db(transaction=True)
@pytest.mark.slow
def test_twenty_concurrent_disburse_calls_send_one_batch(sandbox, cycle, operator):
    outcomes, barrier = [], threading.Barrier(20)

    def disburse() -> None:
        barrier.wait()
        try:
            batches = cycle_disburse(cycle_id=cycle.pk, actor=operator)
            outcomes.append(("ok", batches[0].pk))
        except AppError as error:
            outcomes.append((error.http_status, None))
        finally:
            connections.close_all()

    threads = [threading.Thread(target=disburse) for _ in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert PayoutBatch.objects.count() == 1
    assert sandbox.calls["paypal.payouts.create"] == 1, (outcomes, dict(sandbox.calls))
    assert {status for status, _ in outcomes} <= {"ok", 409, 423}
    assert len({pk for status, pk in outcomes if status == "ok"}) == 1
    assert ledger_integrity_report().findings == []


@pytest.mark.django_db(transaction=True)
def test_webhooks_move_items_forward_in_any_order(sandbox, cycle, operator, live_server):
    sandbox.webhooks.configure("paypal", url=f"{live_server.url}/webhooks/paypal/", duplicate=3, reorder=4)
    (batch,) = cycle_disburse(cycle_id=cycle.pk, actor=operator)
    for _ in range(3):
        sandbox.tick()
    sandbox.webhooks.wait_idle()
    assert statuses(batch)["paid"] == "SUCCESS"  # delivered out of order and four times over
    assert ledger_integrity_report().findings == []
    # events still held back arrive later; meanwhile the polling job converges on the truth
    batch = batch_sync(batch_id=batch.pk)
    assert statuses(batch) == {"paid": "SUCCESS", "unclaimed": "UNCLAIMED", "fail": "FAILED", "return": "RETURNED"}
    assert posted("payouts:winnings-payable:USD") == 1_000_000 - 10_000
    assert ledger_integrity_report().findings == []


@pytest.mark.django_db
def test_staff_cancel_an_item_left_unclaimed(sandbox, cycle, operator, settings):
    from datetime import timedelta

    from django.utils import timezone

    from payouts.services import item_cancel_unclaimed

    (batch,) = cycle_disburse(cycle_id=cycle.pk, actor=operator)
    for _ in range(3):
        sandbox.tick()
    batch_sync(batch_id=batch.pk)
    item = batch.items.get(status="UNCLAIMED")
    with pytest.raises(AppError):  # too early
        item_cancel_unclaimed(item_id=item.pk, actor=operator)
    PayoutItem.objects.filter(pk=item.pk).update(updated_at=timezone.now() - timedelta(days=26))
    assert item_cancel_unclaimed(item_id=item.pk, actor=operator).status == "RETURNED"
    assert available("payouts:winnings-payable:USD") == 1_000_000 - 10_000  # the reservation is released


@pytest.mark.django_db
def test_connected_account_winners_are_paid_by_keyed_stripe_transfers(sandbox, cycle, operator, django_user_model):
    from providers.sandbox import stripe as stripe_sandbox

    WinnerSelection.objects.create(
        cycle=cycle, user=django_user_model.objects.create_user("seller"), amount_minor=7_500, currency="USD",
        recipient_type="STRIPE_ACCOUNT", recipient="acct_1SellerXYZ",
    )  # fmt: skip
    batches = {b.provider: b for b in cycle_disburse(cycle_id=cycle.pk, actor=operator)}
    assert set(batches) == {"paypal", "stripe"}
    stripe_batch = batches["stripe"]
    assert stripe_batch.status == "completed"
    (item,) = stripe_batch.items.all()
    assert (item.status, item.provider_item_id[:3]) == ("SUCCESS", "tr_")
    (transfer,) = stripe_sandbox.state_of(sandbox).transfers.values()
    assert (transfer["amount"], transfer["destination"], transfer["transfer_group"]) == (
        7_500, "acct_1SellerXYZ", stripe_batch.sender_batch_id,
    )  # fmt: skip
    assert batch_sync(batch_id=stripe_batch.pk).status == "completed"  # a replayed sync pays nothing more
    assert movements_sweep() == 0  # nor does the sweeper: the transfer's movement is final
    assert len(stripe_sandbox.state_of(sandbox).transfers) == 1
    assert sandbox.calls["stripe.transfers.create"] == 1
    assert posted("provider:stripe:clearing:USD") == -7_500
    posting = Hold.objects.get(pk=item.hold_id).posted_transaction
    assert posting.metadata["provider"] == "stripe"  # the reconciliation contract: the money's provider id
    assert posting.metadata["provider_reference"] == item.provider_item_id


@pytest.mark.django_db
def test_a_winner_with_a_legacy_payout_under_review_is_not_batched(sandbox, cycle, operator):
    from payouts.models import LegacyPayout

    winner = WinnerSelection.objects.get(recipient="paid@example.com")
    LegacyPayout.objects.create(
        source_file="old.csv", row_number=1, raw_row={}, sender_item_id=f"{winner.user_id}", id_format="user",
        parsed_user_id=winner.user_id, amount_minor=999, currency="USD", status="SUCCESS",
        review_status=LegacyPayout.ReviewStatus.NEEDS_REVIEW,
    )  # fmt: skip
    (batch,) = cycle_prepare(cycle_id=cycle.pk, actor=operator)
    assert "paid" not in statuses(batch)  # held back until a person reviews the legacy payout
    assert set(statuses(batch)) == {"unclaimed", "fail", "return"}
    from core.models import AuditLog

    held = AuditLog.objects.get(action="payouts.cycle.held_for_review").after["held"]
    assert list(held.values()) == [
        f"legacy payout {LegacyPayout.objects.get().pk} may have paid this winner: review it first"
    ]


@pytest.mark.django_db
def test_unknown_batch_ids_are_not_found(operator):
    from core.errors import NotFound

    with pytest.raises(NotFound):
        batch_execute(batch_id=999_999, actor=operator)


@pytest.mark.django_db
def test_batches_split_at_the_item_limit_each_with_its_own_id(sandbox, cycle, operator, monkeypatch):
    import payouts.services.prepare

    monkeypatch.setattr(payouts.services.prepare, "MAX_BATCH_ITEMS", 3)
    batches = cycle_prepare(cycle_id=cycle.pk, actor=operator)
    assert [b.item_count for b in batches] == [3, 1]
    assert len({b.sender_batch_id for b in batches}) == 2
    assert {b.sender_batch_id for b in cycle_prepare(cycle_id=cycle.pk, actor=operator)} == {
        b.sender_batch_id for b in batches
    }  # idempotent across the split too
