"""The purchases API over DRF, with the Stripe sandbox behind it."""

from __future__ import annotations

import uuid

import pytest
from rest_framework.test import APIClient

from escrow.models import Purchase, SpendLimit
from providers.sandbox import stripe as stripe_sandbox
from tests.escrow.factories_purchases import buyer_create, deliverer_create, finance_create, service_create

URL = "/api/v1/purchases/"
BODY = {"service": "phone-verification", "currency": "USD", "amount_minor": 10_000, "payment_method": "pm_card_visa"}


@pytest.fixture(autouse=True)
def _isolated(settings, db):
    settings.PROVIDER_STATE_KEY_PREFIX = f"test:purchases-api:{uuid.uuid4().hex}"
    settings.PROVIDER_RETRY_ATTEMPTS = 1
    service_create()


def client_for(user) -> APIClient:
    client = APIClient()
    client.force_authenticate(user)
    return client


def post(client: APIClient, url: str, body: dict | None = None, key: str | None = None):
    return client.post(url, body or {}, format="json", HTTP_IDEMPOTENCY_KEY=key or uuid.uuid4().hex)


@pytest.mark.django_db
def test_buying_replays_the_same_key_and_refuses_it_for_another_body(sandbox):
    buyer = client_for(buyer_create())
    first = post(buyer, URL, BODY, key="buy-1")
    assert first.status_code == 201, first.json()
    body = first.json()
    assert body["status"] == "reserved" and body["id"] and body["payment_intent_id"].startswith("pi_")
    again = post(buyer, URL, BODY, key="buy-1")
    assert again.status_code == 201 and again.json()["id"] == body["id"]
    assert again.headers["Idempotent-Replayed"] == "true"
    other = post(buyer, URL, {**BODY, "currency": "PHP", "amount_minor": 25_000}, key="buy-1")
    assert other.status_code == 422 and other.json()["error"]["code"] == "idempotency_mismatch"
    assert Purchase.objects.count() == 1
    assert len(stripe_sandbox.state_of(sandbox).payment_intents) == 1
    missing = buyer.post(URL, BODY, format="json")
    assert missing.status_code == 400 and missing.json()["error"]["action_required"]


@pytest.mark.django_db
def test_the_purchase_key_holds_even_after_the_api_key_expired(sandbox):
    buyer_user = buyer_create()
    buyer = client_for(buyer_user)
    first = post(buyer, URL, BODY, key="buy-2")
    from core.models import IdempotencyKey

    IdempotencyKey.objects.all().delete()  # as the 24 h purge does
    again = post(buyer, URL, BODY, key="buy-2")
    assert again.status_code == 201 and again.json()["id"] == first.json()["id"]
    mismatch = post(buyer, URL, {**BODY, "payment_method": "pm_card_mastercard"}, key="buy-2")
    assert mismatch.status_code == 422
    assert sandbox.calls["stripe.payment_intents.create"] == 1


@pytest.mark.django_db
def test_users_see_only_their_own_purchases(sandbox):
    alice, bob = client_for(buyer_create()), client_for(buyer_create())
    purchase_id = post(alice, URL, BODY).json()["id"]
    assert alice.get(f"{URL}{purchase_id}/").status_code == 200
    assert bob.get(f"{URL}{purchase_id}/").status_code == 404
    assert post(bob, f"{URL}{purchase_id}/cancel/").status_code == 404
    assert [p["id"] for p in alice.get(URL).json()["results"]] == [purchase_id]
    assert bob.get(URL).json()["results"] == []


@pytest.mark.django_db
def test_cancel_delivery_and_refund_through_the_api(sandbox):
    buyer, service, finance = client_for(buyer_create()), client_for(deliverer_create()), client_for(finance_create())
    cancelled = post(buyer, URL, BODY).json()["id"]
    response = post(buyer, f"{URL}{cancelled}/cancel/")
    assert response.status_code == 200 and response.json()["status"] == "voided"

    delivered = post(buyer, URL, BODY).json()["id"]
    own = post(buyer, f"{URL}{delivered}/delivery/", {"outcome": "delivered"})
    assert own.status_code == 403 and own.json()["error"]["code"] == "permission_denied"
    response = post(service, f"{URL}{delivered}/delivery/", {"outcome": "delivered", "detail": "code sent"})
    assert response.status_code == 200 and response.json()["status"] == "captured"
    late_cancel = post(buyer, f"{URL}{delivered}/cancel/")
    assert late_cancel.status_code == 409 and late_cancel.json()["error"]["user_message"]

    assert post(buyer, f"{URL}{delivered}/refunds/", {"amount_minor": 100}).status_code == 403
    refund = post(finance, f"{URL}{delivered}/refunds/", {"amount_minor": 2_500, "reason": "goodwill"})
    assert refund.status_code == 201 and refund.json()["status"] == "succeeded"
    too_much = post(finance, f"{URL}{delivered}/refunds/", {"amount_minor": 7_501})
    assert too_much.status_code == 400 and too_much.json()["error"]["details"]["refundable_minor"] == 7_500
    detail = buyer.get(f"{URL}{delivered}/").json()
    assert detail["refunded_minor"] == 2_500 and len(detail["refunds"]) == 1


@pytest.mark.django_db
def test_over_the_spend_limit_is_429_with_retry_after_and_the_key_can_be_retried(sandbox):
    SpendLimit.objects.create(scope="user", currency="USD", window="day", max_amount_minor=5_000)
    buyer = client_for(buyer_create())
    response = post(buyer, URL, BODY, key="limited")
    assert response.status_code == 429 and int(response.headers["Retry-After"]) > 0
    assert "resets_at" in response.json()["error"]["details"]
    assert not Purchase.objects.exists() and sandbox.calls["stripe.payment_intents.create"] == 0
    SpendLimit.objects.all().delete()
    assert post(buyer, URL, BODY, key="limited").status_code == 201  # retryable: the key was not stored


@pytest.mark.django_db
def test_bad_input_is_a_clear_400(sandbox):
    buyer = client_for(buyer_create())
    for body in (
        {**BODY, "amount_minor": 10.5},
        {**BODY, "service": "no-such-service"},
        {**BODY, "amount_minor": 1},
        {k: v for k, v in BODY.items() if k != "payment_method"},
    ):
        response = post(buyer, URL, body)
        assert response.status_code == 400, body
        assert response.json()["error"]["user_message"]
    assert not Purchase.objects.exists()
