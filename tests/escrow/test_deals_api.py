"""The escrow deals API: ownership (404 for others), Idempotency-Key semantics, strict money input,
spend limits, and the error body with user_message and action_required."""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest
from django.utils import timezone
from rest_framework.test import APIClient

from escrow.models import EscrowDeal, SpendLimit
from providers.breaker import shared_redis
from providers.sandbox import stripe as stripe_sandbox
from tests.escrow.factories_deals import UserFactory, held_deal, seller, staff

URL = "/api/v1/escrow/deals/"


@pytest.fixture(autouse=True)
def _isolated(settings):
    prefix = settings.PROVIDER_STATE_KEY_PREFIX = f"test:escrow-api:{uuid.uuid4().hex}"
    settings.PROVIDER_RETRY_ATTEMPTS = 1
    yield
    client = shared_redis()
    for key in client.scan_iter(f"{prefix}:*") if client else []:
        client.delete(key)


def client_for(user) -> APIClient:
    client = APIClient()
    client.force_authenticate(user)
    return client


def post(client: APIClient, url: str, body: dict | None = None, key: str | None = None):
    return client.post(url, body or {}, format="json", HTTP_IDEMPOTENCY_KEY=uuid.uuid4().hex if key is None else key)


def create_body(account, **overrides) -> dict:
    return {
        "seller_account": account.stripe_account_id,
        "amount_minor": 15_000,
        "currency": "USD",
        "deadline": (timezone.now() + timedelta(days=3)).isoformat(),
        "timeout_policy": "refund",
        "payment_method": "pm_card_visa",
        **overrides,
    }


@pytest.mark.django_db
def test_a_buyer_opens_a_deal_once_per_idempotency_key(sandbox):
    buyer, account = UserFactory(), seller(sandbox)
    client, body = client_for(buyer), create_body(account)

    first = post(client, URL, body, key="order-1")
    again = post(client, URL, body, key="order-1")

    assert first.status_code == 201, first.json()
    assert first.json()["status"] == "held" and first.json()["buyer"] == buyer.pk
    assert first.json()["commission_minor"] == 1_200 and first.json()["seller_net_minor"] == 13_800
    assert again.status_code == 201 and again.json() == first.json() and again["Idempotent-Replayed"] == "true"
    assert EscrowDeal.objects.get().client_key == "order-1"
    assert sandbox.calls["stripe.payment_intents.create"] == 1

    other = post(client, URL, {**body, "amount_minor": 16_000}, key="order-1")
    assert other.status_code == 422 and other.json()["error"]["code"] == "idempotency_mismatch"
    assert post(client, URL, body, key="").status_code == 400  # no key, no money moves


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"amount_minor": 150.0}, "amount_minor"),
        ({"amount_minor": "15000"}, "amount_minor"),
        ({"amount_minor": 0}, "amount_minor"),
        ({"currency": "usd"}, "currency"),
        ({"seller_account": "bank-123"}, "seller_account"),
        ({"timeout_policy": "keep"}, "timeout_policy"),
    ],
)
def test_bad_input_is_refused_with_a_clear_error_and_moves_nothing(sandbox, overrides, field):
    account = seller(sandbox)
    response = post(client_for(UserFactory()), URL, create_body(account, **overrides))
    assert response.status_code == 400, response.json()
    error = response.json()["error"]
    assert error["code"] == "invalid_request" and error["user_message"] and error["action_required"]
    assert field in str(error["details"])
    assert not EscrowDeal.objects.exists() and sandbox.calls["stripe.payment_intents.create"] == 0


@pytest.mark.django_db
def test_a_past_deadline_or_an_unknown_seller_is_refused(sandbox):
    client, account = client_for(UserFactory()), seller(sandbox)
    past = post(client, URL, create_body(account, deadline=(timezone.now() - timedelta(minutes=1)).isoformat()))
    assert past.status_code == 400 and "future" in past.json()["error"]["user_message"]
    unknown = post(client, URL, create_body(account, seller_account="acct_nobody"))
    assert unknown.status_code == 404 and unknown.json()["error"]["action_required"]
    assert sandbox.calls["stripe.payment_intents.create"] == 0


@pytest.mark.django_db
def test_users_see_only_their_own_deals(sandbox):
    buyer, stranger, account = UserFactory(), UserFactory(), seller(sandbox)
    deal = held_deal(buyer, account)
    detail = f"{URL}{deal.pk}/"

    assert client_for(buyer).get(detail).json()["status"] == "held"
    assert client_for(account.user).get(detail).status_code == 200  # the seller sees it too
    assert client_for(stranger).get(detail).status_code == 404
    assert client_for(stranger).get(URL).json()["results"] == []
    assert [d["id"] for d in client_for(account.user).get(URL).json()["results"]] == [deal.pk]
    assert post(client_for(stranger), f"{detail}release/").status_code == 404
    assert post(client_for(stranger), f"{detail}cancel/").status_code == 404
    assert EscrowDeal.objects.get(pk=deal.pk).status == "held" and sandbox.calls["stripe.transfers.create"] == 0
    assert APIClient().get(detail).status_code == 401


@pytest.mark.django_db
def test_release_and_cancel_through_the_api(sandbox):
    buyer, account = UserFactory(), seller(sandbox)
    to_release, to_cancel = held_deal(buyer, account), held_deal(buyer, account)

    released = post(client_for(buyer), f"{URL}{to_release.pk}/release/", key="release-1")
    assert released.status_code == 200 and released.json()["status"] == "transferred"
    assert post(client_for(buyer), f"{URL}{to_release.pk}/release/", key="release-1").json() == released.json()
    again = post(client_for(buyer), f"{URL}{to_release.pk}/release/", key="release-2")
    assert again.status_code == 409 and again.json()["error"]["code"] == "invalid_state"
    assert sandbox.calls["stripe.transfers.create"] == 1

    refused = post(client_for(buyer), f"{URL}{to_cancel.pk}/cancel/")
    assert refused.status_code == 403 and refused.json()["error"]["details"]["permission"] == "escrow.refund_escrowdeal"
    canceled = post(client_for(account.user), f"{URL}{to_cancel.pk}/cancel/", {"reason": "out of stock"})
    assert canceled.status_code == 200 and canceled.json()["status"] == "refunded"
    state = stripe_sandbox.state_of(sandbox)
    assert state.payment_intents[canceled.json()["payment_intent_id"]]["status"] == "canceled"


@pytest.mark.django_db
def test_staff_approve_a_large_release_through_the_api(sandbox, settings):
    settings.ESCROW_APPROVAL_THRESHOLD_MINOR = 10_000
    buyer, account = UserFactory(), seller(sandbox)
    deal = held_deal(buyer, account, amount_minor=20_000)
    assert post(client_for(buyer), f"{URL}{deal.pk}/release/").json()["status"] == "awaiting_approval"
    assert post(client_for(buyer), f"{URL}{deal.pk}/approve/").status_code == 403
    approved = post(client_for(staff("approve_escrowdeal", "view_escrowdeal")), f"{URL}{deal.pk}/approve/")
    assert approved.status_code == 200 and approved.json()["status"] == "transferred"


@pytest.mark.django_db
def test_a_deal_over_the_spend_limit_is_refused_with_429_and_leaves_nothing(sandbox):
    SpendLimit.objects.create(
        scope=SpendLimit.Scope.USER, currency="USD", window=SpendLimit.Window.DAY, max_amount_minor=20_000
    )
    buyer, account = UserFactory(), seller(sandbox)
    assert post(client_for(buyer), URL, create_body(account, amount_minor=15_000)).status_code == 201
    over = post(client_for(buyer), URL, create_body(account, amount_minor=6_000), key="second")
    assert over.status_code == 429 and over["Retry-After"]
    assert over.json()["error"]["code"] == "spend_limit_exceeded"
    assert EscrowDeal.objects.count() == 1 and sandbox.calls["stripe.payment_intents.create"] == 1
