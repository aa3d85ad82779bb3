"""Every amount a client sends is bounded (DESIGN.md section 3): integer minor units, above zero and at most the
configured maximum of its currency, with an upper-case ISO 4217 currency. One table of money endpoints against
one table of bad amounts and currencies: each is a 400 in the one error body, and nothing is written or sent."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import pytest
from django.contrib.auth.models import Permission, User
from django.utils import timezone
from rest_framework.test import APIClient

from core.money import amount_max_minor
from escrow.models import EscrowDeal
from providers.models import MoneyMovement, Payment, Refund
from tests.escrow.factories_deals import UserFactory, seller

BAD_AMOUNTS = {
    "zero": 0,
    "negative": -1,
    "over_the_maximum": amount_max_minor("USD") + 1,
    "2**63": 2**63,
    "10**30": 10**30,
    "float": 150.0,
    "string": "15000",
    "boolean": True,
    "null": None,
}
BAD_CURRENCIES = {"lowercase": "usd", "unknown": "XYZ", "empty": "", "number": 840}


def client_for(user: User) -> APIClient:
    client = APIClient()
    client.force_authenticate(user)
    return client


@dataclass(frozen=True)
class MoneyEndpoint:
    name: str
    prepare: Callable[[Any], tuple[APIClient, str, dict[str, Any]]]  # sandbox -> client, url, a good body
    takes_currency: bool

    def rows(self) -> tuple[int, ...]:
        tables = (Payment, Refund, EscrowDeal, MoneyMovement)
        return tuple(table.objects.count() for table in tables)


def _payment(sandbox: Any) -> tuple[APIClient, str, dict[str, Any]]:
    body = {"amount_minor": 10_000, "currency": "USD", "provider": "stripe", "method": "card",
            "payment_method_token": "pm_card_visa"}  # fmt: skip
    return client_for(UserFactory()), "/api/v1/payments/", body


def _deal(sandbox: Any) -> tuple[APIClient, str, dict[str, Any]]:
    account = seller(sandbox)
    body = {
        "seller_account": account.stripe_account_id, "amount_minor": 15_000, "currency": "USD",
        "deadline": (timezone.now() + timedelta(days=3)).isoformat(), "timeout_policy": "refund",
        "payment_method": "pm_card_visa",
    }  # fmt: skip
    return client_for(UserFactory()), "/api/v1/escrow/deals/", body


def _payment_refund(sandbox: Any) -> tuple[APIClient, str, dict[str, Any]]:
    client, url, body = _payment(sandbox)
    reference = client.post(url, body, format="json", HTTP_IDEMPOTENCY_KEY="paid").json()["reference"]
    finance = UserFactory(is_staff=True)
    finance.user_permissions.add(Permission.objects.get(codename="add_refund"))
    return client_for(User.objects.get(pk=finance.pk)), f"/api/v1/payments/{reference}/refunds/", {"amount_minor": 1}


ENDPOINTS = [
    MoneyEndpoint("payment", _payment, takes_currency=True),
    MoneyEndpoint("escrow_deal", _deal, takes_currency=True),
    MoneyEndpoint("payment_refund", _payment_refund, takes_currency=False),
]
CASES = [
    pytest.param(endpoint, "amount_minor", value, id=f"{endpoint.name}-amount-{name}")
    for endpoint in ENDPOINTS
    for name, value in BAD_AMOUNTS.items()
] + [
    pytest.param(endpoint, "currency", value, id=f"{endpoint.name}-currency-{name}")
    for endpoint in ENDPOINTS
    if endpoint.takes_currency
    for name, value in BAD_CURRENCIES.items()
]


@pytest.mark.django_db
@pytest.mark.parametrize(("endpoint", "field", "value"), CASES)
def test_a_bad_amount_is_a_400_that_writes_and_sends_nothing(sandbox, endpoint, field, value):
    client, url, body = endpoint.prepare(sandbox)
    before, calls_before = endpoint.rows(), sum(sandbox.calls.values())

    answer = client.post(url, {**body, field: value}, format="json", HTTP_IDEMPOTENCY_KEY=uuid.uuid4().hex)

    assert answer.status_code == 400, answer.content
    error = answer.json()["error"]
    assert error["code"] == "invalid_request" and error["user_message"] and error["action_required"]
    assert field in str(error["details"]) or "refundable_minor" in error["details"]  # a refund says what is left
    assert endpoint.rows() == before and sum(sandbox.calls.values()) == calls_before
