"""Each sandbox signs and sends real webhooks to our /webhooks/<provider>/ endpoint over HTTP;
the intake verifies them with the provider's own scheme and stores each event once."""

import httpx
import pytest

from providers.base import Pending, Succeeded
from providers.gcash.client import PayMongoClient
from providers.maya.client import MayaClient
from providers.models import WebhookEvent
from providers.paypal.client import PayoutItemRequest, PayPalClient
from providers.sandbox.server import Sandbox

pytestmark = pytest.mark.django_db(transaction=True)


def deliver_to(sandbox: Sandbox, live_server, sandbox_name: str, provider: str, **faults: int) -> None:
    sandbox.webhooks.configure(sandbox_name, url=f"{live_server.url}/webhooks/{provider}/", **faults)


def stored(provider: str) -> list[tuple[str, bool, str]]:
    rows = WebhookEvent.objects.filter(provider=provider).order_by("id")
    return [(row.event_type, row.signature_valid, row.status) for row in rows]


def test_gcash_events_arrive_verified(sandbox, live_server):
    deliver_to(sandbox, live_server, "paymongo", "gcash", duplicate=1)
    source = PayMongoClient().source_create(
        amount_minor=50_000, currency="PHP", success_url="https://shop.example/ok",
        failed_url="https://shop.example/failed", idempotency_key="order-1",
    )  # fmt: skip
    assert isinstance(source, Pending)
    httpx.post(f"{sandbox.url}/paymongo/_simulate/sources/{source.reference}/authorize", json={})
    sandbox.webhooks.wait_idle()
    # stored once (the duplicate stored nothing new); no payment of ours made this source, so processing fails
    assert stored("gcash") == [("source.chargeable", True, "failed")]
    assert [d.status for d in sandbox.webhooks.delivered] == [200, 200]


def test_maya_events_arrive_verified(sandbox, live_server):
    deliver_to(sandbox, live_server, "maya", "maya")
    checkout = MayaClient().checkout_create(
        amount_minor=150_050, currency="PHP", request_reference_number="order-2",
        success_url="https://shop.example/ok", failure_url="https://shop.example/failed",
        cancel_url="https://shop.example/cancel",
    )  # fmt: skip
    httpx.post(f"{sandbox.url}/maya/_simulate/payments/{checkout.reference}/succeed")
    sandbox.webhooks.wait_idle()
    (event,) = WebhookEvent.objects.filter(provider="maya")
    assert event.signature_valid and event.event_id.startswith(f"{checkout.reference}:")


def test_paypal_events_arrive_verified_through_paypal(sandbox, live_server):
    deliver_to(sandbox, live_server, "paypal", "paypal")
    with PayPalClient() as paypal:
        batch = paypal.create_batch(
            sender_batch_id="cycle-1-abc",
            items=[
                PayoutItemRequest(receiver="a@example.com", amount_minor=1_000, currency="USD", sender_item_id="w-1")
            ],
        )
    assert isinstance(batch, Pending)
    sandbox.tick()
    sandbox.tick()
    sandbox.webhooks.wait_idle()
    types = {event_type for event_type, valid, _ in stored("paypal") if valid}
    assert {"PAYMENT.PAYOUTSBATCH.PROCESSING", "PAYMENT.PAYOUTS-ITEM.SUCCEEDED"} <= types
    assert all(valid for _, valid, _ in stored("paypal"))


def test_a_forged_webhook_is_rejected_with_400(sandbox, live_server):
    response = httpx.post(
        f"{live_server.url}/webhooks/gcash/",
        content=b'{"data": {"id": "evt_forged", "attributes": {"type": "payment.paid"}}}',
        headers={"Paymongo-Signature": "t=1,te=deadbeef,li="},
    )
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_signature"
    assert stored("gcash") == [("", False, "rejected")]


def test_stripe_events_arrive_verified(sandbox, live_server):
    from providers.stripe.client import StripeProviderClient

    deliver_to(sandbox, live_server, "stripe", "stripe")
    client = StripeProviderClient()
    try:
        created = client.create_payment_intent(
            amount_minor=5_000, currency="usd", payment_method="pm_card_visa", idempotency_key="order-3:hold"
        )
    finally:
        client.close()
    assert isinstance(created, Succeeded) and created.status == "requires_capture", created  # the hold is in place
    sandbox.webhooks.wait_idle()
    # escrow and purchases handle this type and ignore a PaymentIntent that is not theirs
    assert ("payment_intent.amount_capturable_updated", True, "processed") in stored("stripe")
