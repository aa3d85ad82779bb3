"""Requests of a shape no client should send (DESIGN.md section 8): each is a 4xx in the one error body, with a
user_message and an action_required, and writes and sends nothing; never a 500.

One table of endpoints (every one that moves money, and the reads that take text in their path or query)
against: a body over Django's upload limit (413), deeply nested JSON (400), text one character longer than the
column it is kept in (400, per text field), dates at the ends of the calendar (400), and control characters,
NUL above all, in the path or the query string (400 or 404).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import pytest
from django.conf import settings
from django.contrib.auth.models import Permission, User
from django.db import models
from django.utils import timezone
from rest_framework.test import APIClient

from core.parsers import JSON_MAX_DEPTH
from escrow.models import EscrowDeal, PurchasableService, Purchase, PurchaseRefund, SellerAccount
from escrow.purchases import purchase_create
from ledger.models import Transaction
from payouts.models import PayoutBatch, PayoutCycle
from providers.models import CustomerDefaultMethod, MoneyMovement, Payment, Refund
from tests.api.test_bad_amounts import _deal, _payment, _payment_refund, client_for
from tests.escrow.factories_deals import UserFactory, held_deal, seller
from tests.escrow.factories_purchases import buyer_create, deliverer_create, finance_create, service_create
from tests.ledger.factories import AccountFactory, fund, hot_account

ROWS = (Payment, Refund, EscrowDeal, Purchase, PurchaseRefund, PayoutBatch, MoneyMovement, Transaction)
Prepared = tuple[APIClient, str, dict[str, Any]]  # a client allowed to call, the URL, a good body


def column(model: type[models.Model], name: str) -> int:
    """The most characters the column keeps."""
    return model._meta.get_field(name).max_length  # type: ignore[return-value]


@pytest.fixture(autouse=True)
def _isolated(settings):
    settings.PROVIDER_STATE_KEY_PREFIX = f"test:bad-shapes:{uuid.uuid4().hex}"
    settings.PROVIDER_RETRY_ATTEMPTS = 1


def state(sandbox: Any) -> tuple[tuple[int, ...], int]:
    """Rows of every money table, and calls the providers received."""
    return tuple(table.objects.count() for table in ROWS), sum(sandbox.calls.values())


def assert_refused(answer: Any, status: int, case: object = "") -> dict[str, Any]:
    """A refusal in the one error body that tells a person what is wrong and what to do."""
    assert answer.status_code == status, (case, answer.content[:500])
    error = answer.json()["error"]
    assert set(error) == {"code", "message", "user_message", "action_required", "retryable", "details"}, case
    assert error["user_message"] and error["action_required"] and error["retryable"] is False, case
    return error


# --- the endpoints ------------------------------------------------------------------------------------------


def _default_method(sandbox: Any) -> Prepared:
    return client_for(UserFactory()), "/api/v1/payments/default-method/", {"provider": "stripe", "method": "card"}


def _held(sandbox: Any, action: str, actor: str = "buyer") -> Prepared:
    buyer, account = UserFactory(), seller(sandbox)
    deal = held_deal(buyer, account)
    user = {"buyer": buyer, "seller": account.user}[actor]
    return client_for(user), f"/api/v1/escrow/deals/{deal.pk}/{action}/", {}


def _service() -> None:
    if not PurchasableService.objects.filter(code="phone-verification").exists():
        service_create()


def _purchase(sandbox: Any) -> Prepared:
    _service()
    body = {
        "service": "phone-verification",
        "currency": "USD",
        "amount_minor": 10_000,
        "payment_method": "pm_card_visa",
    }
    return client_for(buyer_create()), "/api/v1/purchases/", body


def _reserved(sandbox: Any, action: str, body: dict[str, Any], actor: Callable[[], User] | None = None) -> Prepared:
    """A purchase held at Stripe, and who may act on it: its buyer, or `actor`."""
    _service()
    buyer = buyer_create()
    purchase = purchase_create(
        buyer=buyer, service_code="phone-verification", currency="USD", payment_method="pm_card_visa",
        client_key=uuid.uuid4().hex,
    )  # fmt: skip
    return client_for(actor() if actor else buyer), f"/api/v1/purchases/{purchase.pk}/{action}/", body


def _reversal(sandbox: Any) -> Prepared:
    wallet, key = AccountFactory(code=f"user:{uuid.uuid4().hex[:8]}:wallet:USD"), uuid.uuid4().hex
    fund(wallet, 5_000, source=hot_account(code=f"clearing:{uuid.uuid4().hex[:8]}"), key=key)
    operator = UserFactory(is_staff=True)
    operator.user_permissions.add(Permission.objects.get(codename="reverse_transaction"))
    txn = Transaction.objects.get(idempotency_key=key)
    return (
        client_for(User.objects.get(pk=operator.pk)),
        f"/api/v1/ledger/transactions/{txn.pk}/reverse/",
        {"reason": "support case"},
    )


def _payouts(path: str) -> Callable[[Any], Prepared]:
    def prepare(sandbox: Any) -> Prepared:
        cycle = PayoutCycle.objects.create(name="bad shapes")
        staff = UserFactory(is_staff=True, is_superuser=True)
        return client_for(staff), f"/api/v1/payouts/{path.format(cycle=cycle.pk, batch=cycle.pk)}", {}

    return prepare


@dataclass(frozen=True)
class Endpoint:
    name: str
    prepare: Callable[[Any], Prepared]
    texts: Mapping[str, int] = field(default_factory=dict)  # text field -> the most characters it may hold
    method: str = "post"

    def send(self, client: APIClient, url: str, body: str) -> Any:
        call = getattr(client, self.method)
        return call(url, body, content_type="application/json", HTTP_IDEMPOTENCY_KEY=uuid.uuid4().hex)


WRITES = [
    Endpoint(
        "payment",
        _payment,
        {
            "method": column(Payment, "method"),
            "preferred_method": column(Payment, "method"),
            "payment_method_token": column(Payment, "payment_method_token"),
        },
    ),
    Endpoint("payment_refund", _payment_refund),
    Endpoint("default_method", _default_method, {"method": column(CustomerDefaultMethod, "method")}, method="put"),
    Endpoint(
        "escrow_deal",
        _deal,
        {
            "seller_account": column(SellerAccount, "stripe_account_id"),
            "payment_method": column(EscrowDeal, "payment_method"),
        },
    ),
    Endpoint("deal_release", lambda sandbox: _held(sandbox, "release")),
    Endpoint("deal_cancel", lambda sandbox: _held(sandbox, "cancel", "seller"), {"reason": 255}),  # audit only
    Endpoint("deal_approve", lambda sandbox: _held(sandbox, "approve")),
    Endpoint(
        "purchase",
        _purchase,
        {
            "service": column(PurchasableService, "code"),
            "payment_method": column(Purchase, "payment_method"),
        },
    ),
    Endpoint("purchase_cancel", lambda sandbox: _reserved(sandbox, "cancel", {})),
    Endpoint(
        "purchase_delivery",
        lambda sandbox: _reserved(sandbox, "delivery", {"outcome": "delivered"}, deliverer_create),
        {"detail": column(Purchase, "outcome_detail")},
    ),
    Endpoint(
        "purchase_refund",
        lambda sandbox: _reserved(sandbox, "refunds", {"amount_minor": 100}, finance_create),
        {"reason": column(PurchaseRefund, "reason")},
    ),
    Endpoint("ledger_reverse", _reversal, {"reason": 200}),  # kept in the reversal's metadata
    Endpoint("cycle_disburse", _payouts("cycles/{cycle}/disburse/")),
    Endpoint("cycle_prepare", _payouts("cycles/{cycle}/prepare/")),
    Endpoint("batch_approve", _payouts("batches/{batch}/approve/")),
    Endpoint("batch_execute", _payouts("batches/{batch}/execute/")),
    Endpoint("batch_retry_failed", _payouts("batches/{batch}/retry-failed/")),
]
TEXTS = [
    pytest.param(endpoint, name, most, id=f"{endpoint.name}-{name}")
    for endpoint in WRITES
    for name, most in endpoint.texts.items()
]
NESTED = {"arrays": "[" * 10_000 + "]" * 10_000, "objects": '{"a":' * 10_000 + "1" + "}" * 10_000}


@pytest.mark.django_db
@pytest.mark.parametrize("endpoint", WRITES, ids=lambda endpoint: endpoint.name)
def test_a_body_over_the_upload_limit_is_a_413_and_a_deeply_nested_one_a_400(sandbox, endpoint):
    client, url, body = endpoint.prepare(sandbox)
    before = state(sandbox)

    huge = endpoint.send(client, url, json.dumps({**body, "pad": "x" * settings.DATA_UPLOAD_MAX_MEMORY_SIZE}))
    assert assert_refused(huge, 413)["code"] == "request_too_large"
    for shape, nested in NESTED.items():
        error = assert_refused(endpoint.send(client, url, nested), 400, shape)
        assert error["details"] == {"max_depth": JSON_MAX_DEPTH}, shape

    assert state(sandbox) == before


@pytest.mark.django_db
@pytest.mark.parametrize(("endpoint", "name", "most"), TEXTS)
def test_text_longer_than_its_column_is_a_400_before_anything_is_written(sandbox, endpoint, name, most):
    client, url, body = endpoint.prepare(sandbox)
    before = state(sandbox)
    overlong = "acct_" + "x" * (most - 4) if name == "seller_account" else "x" * (most + 1)

    error = assert_refused(endpoint.send(client, url, json.dumps({**body, name: overlong})), 400)

    assert name in error["details"]["fields"] and name in error["user_message"]
    assert state(sandbox) == before


CALENDAR_EDGES = {
    "year-1": "0001-01-01T00:00:00Z",
    "year-1-east-of-utc": "0001-01-01T00:00:00+01:00",  # before year 1 in UTC
    "year-9999-west-of-utc": "9999-12-31T23:59:59-12:00",  # after year 9999 in UTC
    "year-9999": "9999-12-31T23:59:59Z",
    "year-10000": "10000-01-01T00:00:00Z",
    "offset-overflows": "2030-01-01T00:00:00+99:00",
    "before-1970": "1969-12-31T23:59:59Z",
    "not-a-date": "tomorrow",
    "empty": "",
}


@pytest.mark.django_db
def test_a_deadline_at_the_ends_of_the_calendar_or_years_ahead_is_a_400(sandbox):
    client, url, body = _deal(sandbox)
    before = state(sandbox)
    too_far = timezone.now() + settings.ESCROW_DEADLINE_MAX + timedelta(minutes=1)  # the business rule
    edges = {**CALENDAR_EDGES, "null": None, "too-far-ahead": too_far.isoformat(), "year-2999": "2999-01-01T00:00:00Z"}

    for name, value in edges.items():
        answer = client.post(url, {**body, "deadline": value}, format="json", HTTP_IDEMPOTENCY_KEY=name)
        error = assert_refused(answer, 400, name)
        assert "deadline" in str(error["details"]) and error["code"] == "invalid_request", name

    assert state(sandbox) == before


@pytest.mark.django_db
def test_statement_dates_at_the_ends_of_the_calendar_are_a_400():
    account = AccountFactory(code=f"user:{uuid.uuid4().hex[:8]}:wallet:USD")
    viewer = UserFactory(is_staff=True)
    viewer.user_permissions.add(Permission.objects.get(codename="view_account"))
    client = client_for(User.objects.get(pk=viewer.pk))
    url = f"/api/v1/ledger/accounts/{account.code}/statement/"
    assert client.get(url, {"until": "2999-01-01T00:00:00Z"}).status_code == 200  # far ahead, yet a time

    for name, value in CALENDAR_EDGES.items():  # `?since=` included: an empty date is a 400, not "not given"
        for parameter in ("since", "until"):
            error = assert_refused(client.get(url, {parameter: value}), 400, (name, parameter))
            assert parameter in error["details"]["fields"] and parameter in error["user_message"], (name, parameter)


def _reads(sandbox: Any) -> list[tuple[APIClient, str]]:
    """The reads whose path or query is text: a payment's reference, an account's code, a currency."""
    client, url, body = _payment(sandbox)
    reference = client.post(url, body, format="json", HTTP_IDEMPOTENCY_KEY="paid").json()["reference"]
    account = AccountFactory(code=f"user:{uuid.uuid4().hex[:8]}:wallet:USD")
    viewer = UserFactory(is_staff=True, is_superuser=True)
    return [
        (client, f"/api/v1/payments/{reference}/"),
        (client_for(viewer), f"/api/v1/ledger/accounts/{account.code}/"),
        (client_for(viewer), f"/api/v1/ledger/accounts/{account.code}/statement/"),
        (client, "/api/v1/spend-limits/?currency=USD"),
        (client, "/api/v1/payments/methods/?amount_minor=100&currency=USD"),
    ]


def with_control_characters(url: str) -> dict[str, str]:
    path, _, query = url.partition("?")
    head, last = path.rstrip("/").rsplit("/", 1)
    return {
        "nul-in-path-parameter": f"{head}/{last[:2]}%00{last[2:]}/",
        "nul-ending-the-path": f"{head}/{last}%00/",
        "escape-in-path": f"{head}/{last}%1B/",
        "nul-in-query": f"{path}?{query}&currency=%00" if query else f"{path}?currency=%00",
        "delete-in-query": f"{path}?x=%7F",
        "nul-in-query-name": f"{path}?%00=1",
    }


@pytest.mark.django_db
def test_control_characters_in_the_path_or_query_are_a_400_for_reads_and_writes(sandbox):
    reads = _reads(sandbox)
    writes = [(endpoint, *endpoint.prepare(sandbox)) for endpoint in WRITES]
    before = state(sandbox)

    for client, url in reads:
        for name, bad in with_control_characters(url).items():
            assert "control characters" in assert_refused(client.get(bad), 400, (url, name))["user_message"]
    for endpoint, client, url, body in writes:
        for name, bad in with_control_characters(url).items():
            error = assert_refused(endpoint.send(client, bad, json.dumps(body)), 400, (endpoint.name, name))
            assert "control characters" in error["user_message"]

    assert state(sandbox) == before


@pytest.mark.django_db
def test_a_post_path_longer_than_any_id_is_a_404_and_error_bodies_never_keep_a_nul(sandbox):
    client, url, body = _payment(sandbox)
    before = state(sandbox)

    long_path = assert_refused(
        client.post(f"{url}{'x' * 600}/refunds/", {}, format="json", HTTP_IDEMPOTENCY_KEY="a"), 404
    )
    assert long_path["code"] == "not_found"
    echoed = client.post(url, {**body, "provider": "str\x00ipe"}, format="json", HTTP_IDEMPOTENCY_KEY="b")
    assert "\\x00" in assert_refused(echoed, 400)["user_message"]  # stored for replays: PostgreSQL refuses NUL
    again = client.post(url, {**body, "provider": "str\x00ipe"}, format="json", HTTP_IDEMPOTENCY_KEY="b")
    assert again.status_code == 400 and again.headers["Idempotent-Replayed"] == "true"

    assert state(sandbox) == before
