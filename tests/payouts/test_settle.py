"""Settling payout items a page at a time (payouts.services.settle): one transaction per page, the ledger in step."""

import uuid

import pytest
from django.contrib.auth.models import Permission
from django.db import connection
from django.test.utils import CaptureQueriesContext

from core.models import Alert
from core.money import Money
from ledger.integrity import ledger_integrity_report
from ledger.models import Entry, Hold, Transaction
from payouts.models import PayoutBatch, PayoutCycle, PayoutItem, WinnerSelection
from payouts.services import (
    ItemUpdate,
    batch_execute,
    batch_sync,
    cycle_prepare,
    items_apply_statuses,
    winnings_fund,
)

PERMISSIONS = ("prepare_payoutbatch", "approve_payoutbatch", "execute_payoutbatch")
S = PayoutItem.Status


@pytest.fixture(autouse=True)
def _settings(settings):
    settings.PROVIDER_STATE_KEY_PREFIX = f"test:settle:{uuid.uuid4().hex}"
    settings.PROVIDER_RETRY_ATTEMPTS = 1


@pytest.fixture
def operator(django_user_model):
    user = django_user_model.objects.create_user("operator", is_staff=True)
    user.user_permissions.set(Permission.objects.filter(codename__in=PERMISSIONS))
    return django_user_model.objects.get(pk=user.pk)


def prepared_batch(django_user_model, operator, winners: int) -> PayoutBatch:
    cycle = PayoutCycle.objects.create(name="Settle")
    for n in range(winners):
        WinnerSelection.objects.create(
            cycle=cycle, user=django_user_model.objects.create_user(f"winner-{n}"), amount_minor=1_000 + n,
            currency="USD", recipient_type="EMAIL", recipient=f"winner{n}@example.com",
        )  # fmt: skip
    winnings_fund(amount=Money(10_000_000, "USD"), reference=f"pool-{cycle.pk}")
    (batch,) = cycle_prepare(cycle_id=cycle.pk, actor=operator)
    return batch


def items_of(batch: PayoutBatch) -> list[PayoutItem]:
    return list(batch.items.order_by("pk"))


def hold_of(item: PayoutItem) -> Hold:
    return Hold.objects.get(pk=item.hold_id)


@pytest.mark.django_db
def test_a_page_moves_items_forward_with_the_ledger_and_skips_the_rest(django_user_model, operator):
    paid, failed, unchanged, backwards = items_of(prepared_batch(django_user_model, operator, 4))
    PayoutItem.objects.filter(pk=backwards.pk).update(status=S.PENDING)

    moved = items_apply_statuses(
        updates=[
            ItemUpdate(paid.pk, S.SUCCESS, "PAYPAL-1"),
            ItemUpdate(failed.pk, S.FAILED, "PAYPAL-2", error="receiver refused"),
            ItemUpdate(unchanged.pk, S.NEW),  # the same status: nothing to do
            ItemUpdate(backwards.pk, S.NEW),  # not a move forward: ignored
        ]
    )

    assert moved == 2
    statuses = dict(PayoutItem.objects.filter(batch=paid.batch).values_list("pk", "status"))
    assert statuses == {paid.pk: S.SUCCESS, failed.pk: S.FAILED, unchanged.pk: S.NEW, backwards.pk: S.PENDING}
    assert PayoutItem.objects.get(pk=failed.pk).error == "receiver refused"
    posting = hold_of(paid).posted_transaction
    assert posting.idempotency_key == f"hold:{paid.hold_id}:post"
    assert posting.metadata["provider_reference"] == "PAYPAL-1"
    assert sorted(posting.entries.values_list("amount_minor", flat=True)) == [-paid.amount_minor, paid.amount_minor]
    assert [hold_of(i).status for i in (failed, unchanged, backwards)] == ["voided", "pending", "pending"]
    assert Alert.objects.get(key=f"payout:batch:{paid.batch_id}:unpaid").occurrences == 1
    assert ledger_integrity_report().findings == []


@pytest.mark.django_db
def test_a_page_applied_again_changes_nothing(django_user_model, operator):
    items = items_of(prepared_batch(django_user_model, operator, 5))
    page = [ItemUpdate(item.pk, S.SUCCESS, f"PAYPAL-{item.pk}") for item in items]
    assert items_apply_statuses(updates=page) == 5
    entries = Entry.objects.count()

    assert items_apply_statuses(updates=page) == 0

    assert Entry.objects.count() == entries
    assert Transaction.objects.filter(idempotency_key__startswith="hold:").count() == 5


@pytest.mark.django_db
def test_a_page_costs_the_same_queries_for_few_items_or_many(django_user_model, operator):
    items = items_of(prepared_batch(django_user_model, operator, 40))
    queries = []
    for page in (items[:2], items[2:]):
        with CaptureQueriesContext(connection) as captured:
            items_apply_statuses(updates=[ItemUpdate(item.pk, S.SUCCESS, f"P-{item.pk}") for item in page])
        queries.append(len(captured))

    assert queries[0] == queries[1]
    assert Hold.objects.filter(status=Hold.Status.POSTED).count() == 40


@pytest.mark.django_db
def test_money_taken_back_after_success_reverses_the_posting(django_user_model, operator):
    (item,) = items_of(prepared_batch(django_user_model, operator, 1))
    items_apply_statuses(updates=[ItemUpdate(item.pk, S.SUCCESS, "PAYPAL-1")])
    posting = hold_of(item).posted_transaction

    assert items_apply_statuses(updates=[ItemUpdate(item.pk, S.REVERSED)]) == 1

    reversal = Transaction.objects.get(reverses=posting)
    assert sorted(reversal.entries.values_list("amount_minor", flat=True)) == [-item.amount_minor, item.amount_minor]
    assert Alert.objects.filter(key=f"payout:batch:{item.batch_id}:taken-back").exists()
    assert ledger_integrity_report().findings == []


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_pages_applied_at_once_settle_a_batch_polled_page_by_page(
    sandbox, django_user_model, operator, settings, monkeypatch
):
    """Outside a caller's transaction the poller applies two pages at once, each on its own connection."""
    import payouts.services.track

    monkeypatch.setattr(payouts.services.track, "PAGE_SIZE", 4)
    settings.PAYOUT_SETTLE_APPLIERS = 2
    batch = batch_execute(batch_id=prepared_batch(django_user_model, operator, 23).pk, actor=operator)
    for _ in range(3):
        sandbox.tick()

    batch = batch_sync(batch_id=batch.pk)

    assert batch.status == PayoutBatch.Status.COMPLETED
    assert set(batch.items.values_list("status", flat=True)) == {S.SUCCESS}
    holds = Hold.objects.filter(pk__in=batch.items.values("hold_id"))
    assert holds.filter(status=Hold.Status.POSTED).count() == 23
    assert ledger_integrity_report().findings == []
