"""Every API error has the one error body; the schema and its docs page are served and clean."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import User
from django.core.management import call_command
from django.urls import reverse
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from ledger.services import account_create

pytestmark = pytest.mark.django_db

ERROR_FIELDS = {"code", "message", "user_message", "action_required", "retryable", "details"}
ACCOUNTS = reverse("ledger-api:account-list")


@pytest.fixture
def user() -> User:
    return User.objects.create_user("client", password="pw")


@pytest.fixture
def client(user: User) -> APIClient:
    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Token {Token.objects.create(user=user).key}")
    return api


def error_of(response, status: int, code: str) -> dict:
    assert response.status_code == status
    assert response["Content-Type"] == "application/json"
    body = response.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == ERROR_FIELDS
    error = body["error"]
    assert error["code"] == code
    assert isinstance(error["retryable"], bool)
    assert isinstance(error["details"], dict)
    assert error["message"] and error["user_message"] and error["action_required"]
    return error


def test_401_without_credentials():
    response = APIClient().get(ACCOUNTS)

    error_of(response, 401, "not_authenticated")
    assert response["WWW-Authenticate"] == "Token"


def test_401_with_a_bad_token():
    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION="Token not-a-real-token")

    error = error_of(api.get(ACCOUNTS), 401, "authentication_failed")

    assert error["user_message"] == "You are not signed in."


def test_403_without_permission(client):
    url = reverse("ledger-api:transaction-reverse", args=[1])

    error = error_of(
        client.post(url, {"reason": "x"}, format="json", HTTP_IDEMPOTENCY_KEY="k"), 403, "permission_denied"
    )

    assert error["details"] == {"permission": "ledger.reverse_transaction"}


def test_404_for_an_unknown_account(client):
    error = error_of(client.get(reverse("ledger-api:account-detail", args=["nope"])), 404, "not_found")

    assert error["details"] == {"account": "nope"}


def test_400_on_validation_error(client, user):
    account_create(code="w", name="W", type="liability", currency="USD", owner_type="user", owner_id=str(user.pk))
    url = reverse("ledger-api:account-statement", args=["w"])

    error = error_of(client.get(url, {"until": "soon"}), 400, "invalid_request")

    assert list(error["details"]["fields"]) == ["until"]
    assert error["retryable"] is False


def test_405_on_a_wrong_method(client):
    response = client.post(ACCOUNTS, {}, format="json")

    error_of(response, 405, "method_not_allowed")
    assert "GET" in response["Allow"]


def test_500_is_an_error_body_too(client, monkeypatch):
    def broken(user: object) -> None:
        raise RuntimeError("boom")

    monkeypatch.setattr("ledger.api.views.accounts_visible_to", broken)

    error = error_of(client.get(ACCOUNTS), 500, "internal_error")

    assert error["retryable"] is True
    assert "boom" not in error["message"]


def test_schema_and_docs_are_served():
    schema = APIClient().get("/api/schema/")
    docs = APIClient().get("/api/docs/")

    assert schema.status_code == 200
    assert b"/api/v1/ledger/transactions/{transaction_id}/reverse/" in schema.content
    assert docs.status_code == 200
    assert b"swagger-ui" in docs.content


def test_schema_generates_without_warnings(tmp_path):
    # --fail-on-warn turns any drf-spectacular warning or error into a CommandError; --validate checks OpenAPI 3.
    call_command("spectacular", "--fail-on-warn", "--validate", "--file", str(tmp_path / "schema.yaml"))

    assert "/api/v1/ledger/accounts/{code}/statement/" in (tmp_path / "schema.yaml").read_text()


@pytest.mark.parametrize("value", [12.0, 12.5, "12", True, None])
def test_minor_units_are_json_integers_only(value):
    from rest_framework import serializers

    from core.api import MinorUnitsField

    class Body(serializers.Serializer):
        amount_minor = MinorUnitsField(min_value=1)

    assert not Body(data={"amount_minor": value}).is_valid()
    assert Body(data={"amount_minor": 12}).is_valid()
