"""Idempotency-Key semantics (Stripe's), exercised through the ledger reverse endpoint."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.contrib.auth.models import Permission, User
from django.urls import reverse
from django.utils import timezone
from rest_framework.authtoken.models import Token
from rest_framework.parsers import JSONParser
from rest_framework.request import Request
from rest_framework.test import APIClient, APIRequestFactory

from core.api import request_fingerprint
from core.errors import LedgerContention
from core.models import AuditLog, IdempotencyKey
from core.money import Money
from core.services import idempotency_keys_purge
from ledger.models import Transaction
from ledger.services import account_create, credit, debit, transaction_post

pytestmark = pytest.mark.django_db

ERROR_FIELDS = {"code", "message", "user_message", "action_required", "retryable", "details"}


def make_operator(username: str = "operator") -> User:
    user = User.objects.create_user(username, password="pw", is_staff=True)
    user.user_permissions.add(Permission.objects.get(content_type__app_label="ledger", codename="reverse_transaction"))
    return user


def client_for(user: User) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {Token.objects.create(user=user).key}")
    return client


@pytest.fixture
def operator() -> User:
    return make_operator()


@pytest.fixture
def client(operator: User) -> APIClient:
    return client_for(operator)


@pytest.fixture
def funding() -> Transaction:
    account_create(code="platform:clearing:USD", name="Clearing", type="asset", currency="USD", allow_negative=True)
    account_create(code="user:1:wallet:USD", name="Wallet", type="liability", currency="USD")
    amount = Money(4_200, "USD")
    return transaction_post(
        idempotency_key="fund:1",
        kind="funding",
        legs=[debit("platform:clearing:USD", amount), credit("user:1:wallet:USD", amount)],
    )


@pytest.fixture
def url(funding: Transaction) -> str:
    return reverse("ledger-api:transaction-reverse", args=[funding.pk])


def post(client: APIClient, url: str, body: dict, key: str | None):
    headers = {} if key is None else {"HTTP_IDEMPOTENCY_KEY": key}
    return client.post(url, body, format="json", **headers)


def fingerprint(url: str, body: dict) -> str:
    request = Request(APIRequestFactory().post(url, body, format="json"), parsers=[JSONParser()])
    return request_fingerprint(request)


@pytest.mark.parametrize("key", [None, "", "k" * 256, "clé"])
def test_missing_or_malformed_key_is_refused(client, url, key):
    response = post(client, url, {"reason": "dup"}, key)

    assert response.status_code == 400
    error = response.json()["error"]
    assert set(error) == ERROR_FIELDS
    assert (error["code"], error["retryable"]) == ("invalid_request", False)
    assert "Idempotency-Key" in error["message"]
    assert not Transaction.objects.filter(kind="reversal").exists()
    assert not IdempotencyKey.objects.exists()


def test_replay_returns_the_stored_response_and_posts_nothing(client, url):
    first = post(client, url, {"reason": "dup"}, "rev-1")
    transactions, audits = Transaction.objects.count(), AuditLog.objects.count()

    replay = post(client, url, {"reason": "dup"}, "rev-1")

    assert first.status_code == 201
    assert "Idempotent-Replayed" not in first.headers
    assert replay.status_code == 201
    assert replay.headers["Idempotent-Replayed"] == "true"
    assert replay.json() == first.json()
    assert (Transaction.objects.count(), AuditLog.objects.count()) == (transactions, audits)
    stored = IdempotencyKey.objects.get(key="rev-1")
    assert (stored.status, stored.response_status, stored.response_body) == ("completed", 201, first.json())


def test_a_final_error_is_replayed_too(client, url):
    first = post(client, url, {"reason": ""}, "rev-1")

    replay = post(client, url, {"reason": ""}, "rev-1")

    assert first.status_code == replay.status_code == 400
    assert replay.headers["Idempotent-Replayed"] == "true"
    assert replay.json() == first.json()


def test_same_key_with_another_body_is_a_mismatch(client, url):
    post(client, url, {"reason": "dup"}, "rev-1")

    response = post(client, url, {"reason": "something else"}, "rev-1")

    assert response.status_code == 422
    error = response.json()["error"]
    assert (error["code"], error["retryable"]) == ("idempotency_mismatch", False)
    assert error["details"]["idempotency_key"] == "rev-1"
    assert Transaction.objects.filter(kind="reversal").count() == 1


def test_keys_are_scoped_per_user(client, url):
    other = client_for(make_operator("other"))
    post(client, url, {"reason": "dup"}, "rev-1")

    response = post(other, url, {"reason": "another"}, "rev-1")

    # Not a replay of the first user's response and not a mismatch: a new request, refused on its merits.
    assert response.status_code == 409
    assert response.json()["error"]["code"] == "already_reversed"
    assert "Idempotent-Replayed" not in response.headers


def test_a_key_in_flight_is_a_conflict(client, operator, url):
    body = {"reason": "dup"}
    IdempotencyKey.objects.create(
        user=operator,
        key="rev-1",
        method="POST",
        path=url,
        request_hash=fingerprint(url, body),
        locked_at=timezone.now(),
    )

    response = post(client, url, body, "rev-1")

    assert response.status_code == 409
    error = response.json()["error"]
    assert (error["code"], error["retryable"]) == ("idempotency_in_flight", True)
    assert not Transaction.objects.filter(kind="reversal").exists()
    assert IdempotencyKey.objects.get(key="rev-1").status == IdempotencyKey.Status.IN_FLIGHT


def test_an_abandoned_in_flight_key_is_taken_over(client, operator, url, settings):
    body = {"reason": "dup"}
    stale = timezone.now() - timedelta(seconds=settings.IDEMPOTENCY_IN_FLIGHT_TIMEOUT_SECONDS + 1)
    IdempotencyKey.objects.create(
        user=operator, key="rev-1", method="POST", path=url, request_hash=fingerprint(url, body), locked_at=stale
    )

    response = post(client, url, body, "rev-1")

    assert response.status_code == 201
    assert IdempotencyKey.objects.get(key="rev-1").status == IdempotencyKey.Status.COMPLETED


def test_keys_older_than_24_hours_are_purged(client, url):
    post(client, url, {"reason": "dup"}, "old")
    post(client, url, {"reason": "dup"}, "recent")
    now = timezone.now()
    IdempotencyKey.objects.filter(key="old").update(created_at=now - timedelta(hours=24, minutes=1))
    IdempotencyKey.objects.filter(key="recent").update(created_at=now - timedelta(hours=23, minutes=59))

    purged = idempotency_keys_purge()

    assert purged == 1
    assert list(IdempotencyKey.objects.values_list("key", flat=True)) == ["recent"]


def test_a_retryable_error_is_not_stored_and_the_key_can_be_retried(client, url, monkeypatch):
    def contended(**kwargs: object) -> Transaction:
        raise LedgerContention("transaction_reverse gave up after 5 attempts")

    monkeypatch.setattr("ledger.api.views.transaction_reverse", contended)
    failed = post(client, url, {"reason": "dup"}, "rev-1")
    monkeypatch.undo()
    stored_after_failure = IdempotencyKey.objects.filter(key="rev-1").exists()

    retried = post(client, url, {"reason": "dup"}, "rev-1")

    assert failed.status_code == 503
    assert (failed.json()["error"]["code"], failed.json()["error"]["retryable"]) == ("ledger_contention", True)
    assert not stored_after_failure
    assert retried.status_code == 201
    assert "Idempotent-Replayed" not in retried.headers
    assert Transaction.objects.filter(kind="reversal").count() == 1
