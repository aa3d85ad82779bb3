"""A burst of PayPal item webhooks is applied as pages of item updates, ending as the events one by one would."""

import json
import uuid

import pytest

from ledger.integrity import ledger_integrity_report
from payouts import webhooks as payout_webhooks
from payouts.models import PayoutBatch
from payouts.services import cycle_disburse
from providers.models import WebhookEvent
from providers.webhooks import webhook_events_process
from tests.payouts.cycles import available, posted, statuses

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _settings(settings):
    settings.PROVIDER_STATE_KEY_PREFIX = f"test:payouts:{uuid.uuid4().hex}"
    settings.PROVIDER_RETRY_ATTEMPTS = 1


@pytest.fixture
def pages(monkeypatch):
    """The pages of item updates the webhook handler applies (each still applied for real)."""
    seen: list[list[str]] = []
    apply = payout_webhooks.items_apply_statuses

    def recording(*, updates):
        seen.append([update.status for update in updates])
        return apply(updates=updates)

    monkeypatch.setattr(payout_webhooks, "items_apply_statuses", recording)
    return seen


def item_event(batch: PayoutBatch, receiver: str, status: str, sender_item_id: str | None = None) -> int:
    item = batch.items.get(receiver=f"{receiver}@example.com")
    event_type = {"SUCCESS": "SUCCEEDED"}.get(status, status)
    body = {
        "id": f"WH-{uuid.uuid4().hex}",
        "event_type": f"PAYMENT.PAYOUTS-ITEM.{event_type}",
        "resource": {
            "payout_item_id": item.provider_item_id or f"ITEM-{item.pk}",
            "transaction_status": status,
            "payout_batch_id": batch.provider_batch_id,
            "sender_batch_id": batch.sender_batch_id,
            "payout_item": {"sender_item_id": sender_item_id or item.sender_item_id},
        },
    }
    return WebhookEvent.objects.create(
        provider="paypal", event_id=body["id"], event_type=body["event_type"], signature_valid=True,
        body=json.dumps(body),
    ).pk  # fmt: skip


def test_a_burst_is_one_page_per_round_and_ends_as_one_by_one(sandbox, cycle, operator, pages):
    (batch,) = cycle_disburse(cycle_id=cycle.pk, actor=operator)
    burst = [
        item_event(batch, "paid", "SUCCESS"),
        item_event(batch, "return", "SUCCESS"),
        item_event(batch, "fail", "FAILED"),
        item_event(batch, "unclaimed", "UNCLAIMED"),
        item_event(batch, "return", "RETURNED"),  # the same item again: the next page
        item_event(batch, "paid", "SUCCESS"),  # a duplicate changes nothing
    ]

    assert webhook_events_process(event_pks=burst) == len(burst)

    assert pages == [["SUCCESS", "SUCCESS", "FAILED", "UNCLAIMED"], ["RETURNED", "SUCCESS"]]
    assert set(WebhookEvent.objects.filter(pk__in=burst).values_list("status", flat=True)) == {"processed"}
    assert statuses(batch) == {"paid": "SUCCESS", "unclaimed": "UNCLAIMED", "fail": "FAILED", "return": "RETURNED"}
    # paid 10,000; returned 40,000 was posted then reversed; failed 30,000 released; unclaimed 20,000 still held
    assert posted("payouts:winnings-payable:USD") == 1_000_000 - 10_000
    assert available("payouts:winnings-payable:USD") == 1_000_000 - 10_000 - 20_000
    assert ledger_integrity_report().findings == []


def test_an_old_status_after_a_newer_one_in_the_same_burst_changes_nothing(sandbox, cycle, operator, pages):
    (batch,) = cycle_disburse(cycle_id=cycle.pk, actor=operator)
    burst = [item_event(batch, "return", "SUCCESS"), item_event(batch, "return", "RETURNED")]
    burst.append(item_event(batch, "return", "SUCCESS"))  # delivered late: RETURNED stays

    webhook_events_process(event_pks=burst)

    assert statuses(batch)["return"] == "RETURNED"
    assert posted("payouts:winnings-payable:USD") == 1_000_000  # posted, then reversed: nothing paid
    assert ledger_integrity_report().findings == []


def test_an_event_for_an_unknown_item_fails_alone(sandbox, cycle, operator, pages):
    (batch,) = cycle_disburse(cycle_id=cycle.pk, actor=operator)
    unknown = item_event(batch, "fail", "FAILED", sender_item_id="not-ours")
    burst = [item_event(batch, "paid", "SUCCESS"), unknown, item_event(batch, "fail", "FAILED")]

    assert webhook_events_process(event_pks=burst) == len(burst)

    assert WebhookEvent.objects.get(pk=unknown).status == "failed"
    assert "not-ours" in WebhookEvent.objects.get(pk=unknown).error
    assert set(WebhookEvent.objects.exclude(pk=unknown).values_list("status", flat=True)) == {"processed"}
    assert (statuses(batch)["paid"], statuses(batch)["fail"]) == ("SUCCESS", "FAILED")
    assert ledger_integrity_report().findings == []


def test_events_another_worker_holds_are_left_to_it(sandbox, cycle, operator, pages):
    (batch,) = cycle_disburse(cycle_id=cycle.pk, actor=operator)
    held = item_event(batch, "paid", "SUCCESS")
    WebhookEvent.objects.filter(pk=held).update(status="processing")
    burst = [held, item_event(batch, "fail", "FAILED")]

    assert webhook_events_process(event_pks=burst) == 1

    assert pages == [["FAILED"]]
    assert WebhookEvent.objects.get(pk=held).status == "processing"
    assert statuses(batch)["paid"] != "SUCCESS"
