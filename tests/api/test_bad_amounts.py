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
from django.core.files.uploadedfile import SimpleUploadedFile
from django.db import models
from django.utils import timezone
from rest_framework.test import APIClient

from core.money import amount_max_minor
from escrow.admin.purchases import RefundPartForm
from escrow.models import CommissionTier, EscrowDeal, ServicePrice, SpendLimit
from payouts.legacy import legacy_import
from payouts.models import LegacyPayout, PayoutCycle, WinnerSelection
from providers.models import FeeRule, MoneyMovement, Payment, PaymentMethod, Refund
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
    finance.user_permissions.add(*Permission.objects.filter(codename__in=["add_refund", "view_payment"]))
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


# --- the admin and CSV imports: the same rule (core.money), answered with a form error -----------------------


@dataclass(frozen=True)
class AdminForm:
    name: str
    url: str
    good: dict[str, str]  # a form that saves
    amount_field: str
    table: type[models.Model]
    zero_allowed: bool = False


ADMIN_FORMS = [
    AdminForm("spend_limit", "/admin/escrow/spendlimit/add/", {
        "scope": "user", "currency": "USD", "window": "day", "max_amount_minor": "500000", "active": "on",
    }, "max_amount_minor", SpendLimit, zero_allowed=True),
    AdminForm("payment_method_max", "/admin/providers/paymentmethod/add/", {
        "provider": "stripe", "method": "card_test", "currency": "USD", "min_minor": "1", "max_minor": "100000",
        "priority": "100", "enabled": "on",
    }, "max_minor", PaymentMethod),
    AdminForm("payment_method_min", "/admin/providers/paymentmethod/add/", {
        "provider": "stripe", "method": "card_test", "currency": "USD", "min_minor": "1", "max_minor": "100000",
        "priority": "100", "enabled": "on",
    }, "min_minor", PaymentMethod),
    AdminForm("fee_rule", "/admin/providers/feerule/add/", {
        "provider": "stripe", "method": "card", "currency": "USD", "percent_bps": "290", "fixed_minor": "30",
        "platform_percent_bps": "0", "platform_fixed_minor": "0", "effective_from_0": "2031-01-01",
        "effective_from_1": "00:00:00",
    }, "fixed_minor", FeeRule, zero_allowed=True),
    AdminForm("fee_rule_platform", "/admin/providers/feerule/add/", {
        "provider": "stripe", "method": "card", "currency": "USD", "percent_bps": "290", "fixed_minor": "30",
        "platform_percent_bps": "0", "platform_fixed_minor": "0", "effective_from_0": "2031-01-01",
        "effective_from_1": "00:00:00",
    }, "platform_fixed_minor", FeeRule, zero_allowed=True),
    AdminForm("service_price", "/admin/escrow/purchasableservice/add/", {
        "code": "bounded-service", "name": "Bounded", "delivery_timeout": "00:15:00", "active": "on",
        "prices-TOTAL_FORMS": "1", "prices-INITIAL_FORMS": "0", "prices-MIN_NUM_FORMS": "0",
        "prices-MAX_NUM_FORMS": "1000", "prices-0-currency": "USD", "prices-0-amount_minor": "10000",
    }, "prices-0-amount_minor", ServicePrice),
    AdminForm("commission_tier", "/admin/escrow/commissiontier/add/", {
        "name": "bounded", "rate_bps": "500", "description": "", "active": "on",
    }, "rate_bps", CommissionTier),  # basis points, not an amount: at most 10,000 and never an integer overflow
]  # fmt: skip
BAD_ADMIN_AMOUNTS = {
    "over_the_maximum": str(amount_max_minor("USD") + 1),
    "2**63": str(2**63),
    "10**30": str(10**30),
    "negative": "-1",
    "decimal": "12.5",
    "text": "lots",
}


@pytest.fixture
def admin_client(client, django_user_model):
    client.force_login(django_user_model.objects.create_superuser("bounds-admin", password="pw"))
    return client


@pytest.mark.django_db
@pytest.mark.parametrize("form", ADMIN_FORMS, ids=lambda form: form.name)
def test_an_admin_form_refuses_an_amount_out_of_bounds_with_a_form_error(admin_client, form):
    before = form.table.objects.count()
    bad = {**BAD_ADMIN_AMOUNTS, **({} if form.zero_allowed or form.name == "commission_tier" else {"zero": "0"})}

    for name, value in bad.items():
        page = admin_client.post(form.url, {**form.good, form.amount_field: value})
        assert page.status_code == 200, (name, page.status_code)  # the form again, with its errors
        assert b"errorlist" in page.content, name
        assert form.table.objects.count() == before, name
    assert (
        admin_client.post(form.url, {**form.good, form.amount_field: "0" if form.zero_allowed else "1"}).status_code
        == 302
    )
    assert form.table.objects.count() == before + 1


@pytest.mark.django_db
def test_an_admin_form_refuses_an_unknown_currency(admin_client):
    spend_limit = ADMIN_FORMS[0]
    page = admin_client.post(spend_limit.url, {**spend_limit.good, "currency": "usd"})
    assert page.status_code == 200 and b"upper-case ISO 4217" in page.content and not SpendLimit.objects.exists()


@pytest.mark.parametrize("amount", ["100000000.00", "9" * 30, "0", "-5", "1.001"])
def test_the_partial_refund_form_holds_amounts_to_the_same_bounds(amount):
    form = RefundPartForm(data={"amount": amount, "reason": "", "refund_key": "k"}, currency="USD")
    assert not form.is_valid() and form.errors["amount"]
    assert RefundPartForm(data={"amount": "99999999.00", "refund_key": "k"}, currency="USD").is_valid()


@pytest.mark.django_db
def test_the_winners_csv_import_refuses_an_amount_out_of_bounds_and_imports_nothing(admin_client):
    cycle = PayoutCycle.objects.create(name="bounds")
    winner = UserFactory()
    text = (
        "user_id,amount,currency,recipient_type,recipient\n"
        f"{winner.pk},100000000.00,USD,EMAIL,a@example.com\n"
        f"{winner.pk},{'9' * 30},USD,EMAIL,b@example.com\n"
        f"{winner.pk},5.00,USD,EMAIL,{'c' * 250}@example.com\n"
    )
    upload = SimpleUploadedFile("winners.csv", text.encode(), content_type="text/csv")
    page = admin_client.post("/admin/payouts/winnerselection/import/", {"cycle": cycle.pk, "file": upload})

    assert page.status_code == 200
    content = page.content.decode()
    assert "line 2: amount &#x27;100000000.00&#x27;: the amount is more than the maximum" in content
    assert "line 3: amount" in content and "longer than 255 characters" in content
    assert not WinnerSelection.objects.exists()


@pytest.mark.django_db
def test_the_legacy_csv_import_flags_an_amount_out_of_bounds_for_review(tmp_path):
    path = tmp_path / "legacy.csv"
    path.write_text(
        "Transaction ID,Payout Item ID,Sender Item ID,Recipient,Amount,Currency,Status,Date\n"
        f"T1,I1,s1,a@example.com,{10**14},USD,SUCCESS,2024-01-01\n"
        "T2,I2,s2,b@example.com,12.50,USD,SUCCESS,2024-01-01\n"
    )
    legacy_import(path)
    huge, fine = LegacyPayout.objects.order_by("row_number")
    assert huge.amount_minor is None and "more than the maximum" in huge.review_note
    assert huge.review_status == LegacyPayout.ReviewStatus.NEEDS_REVIEW
    assert fine.amount_minor == 1_250
