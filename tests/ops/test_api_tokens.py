"""Client API tokens: issued in the admin (the key shown once, only its hash stored), refused with a 401 once
revoked, past their date or older than API_TOKEN_MAX_AGE_DAYS, and audited."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
from django.contrib.auth.models import User
from django.test import Client
from django.utils import timezone
from rest_framework.authtoken.models import Token

from core.models import ApiToken, AuditLog
from core.tokens import api_token_issue, api_token_revoke, key_hash
from tests.ops.conftest import make_staff

pytestmark = pytest.mark.django_db

ENDPOINT = "/api/v1/payouts/my-payouts/"  # any endpoint for signed-in clients


def call(key: str) -> tuple[int, dict]:
    response = Client().get(ENDPOINT, HTTP_AUTHORIZATION=f"Token {key}")
    return response.status_code, response.json()


def error_code(key: str) -> tuple[int, str]:
    status, body = call(key)
    return status, body.get("error", {}).get("code", "")


@pytest.fixture
def customer() -> User:
    return User.objects.create_user("client-app-user")


@pytest.fixture
def admin_client() -> Client:
    make_staff("root", is_superuser=True)
    client = Client()
    client.force_login(User.objects.get(username="root"))
    return client


def test_a_token_issued_in_the_admin_is_shown_once_stored_hashed_and_works(admin_client, customer):
    page = admin_client.get("/admin/core/apitoken/add/")
    assert page.status_code == 200

    form = {"user": customer.pk, "name": "checkout app", "expires_at_0": "2099-01-01", "expires_at_1": "00:00:00"}
    response = admin_client.post("/admin/core/apitoken/add/", form)

    assert response.status_code == 200
    assert "no-store" in response["Cache-Control"]
    key = re.search(r'<code id="api-token-key"[^>]*>([0-9a-f]{40})</code>', response.content.decode()).group(1)
    token = ApiToken.objects.get()
    assert (token.user, token.key_prefix, token.key_hash) == (customer, key[:8], key_hash(key))
    assert not ApiToken.objects.filter(key_hash=key).exists()  # the key itself is nowhere in the database
    assert call(key)[0] == 200
    issued = AuditLog.objects.get(action="api_token.issue")
    assert (issued.actor_repr, issued.after["key_prefix"], issued.after["user"]) == ("root", key[:8], customer.username)
    assert key not in str(issued.after)
    assert admin_client.get(f"/admin/core/apitoken/{token.pk}/change/").content.decode().count(key) == 0


def test_a_token_revoked_in_the_admin_is_refused_at_once(admin_client, customer):
    issued = api_token_issue(user=customer, name="mobile app", expires_at=None, actor=None)
    assert call(issued.key)[0] == 200

    response = admin_client.post("/admin/core/apitoken/", {"action": "revoke", "_selected_action": [issued.token.pk]})

    assert response.status_code == 302
    assert error_code(issued.key) == (401, "token_revoked")
    token = ApiToken.objects.get()
    assert token.revoked_by.username == "root" and token.revoked_at is not None
    assert AuditLog.objects.get(action="api_token.revoke").after["state"] == "revoked"


def test_revoking_twice_changes_nothing(customer):
    root = make_staff("root2", is_superuser=True)
    issued = api_token_issue(user=customer, name="app", expires_at=None, actor=root)

    first = api_token_revoke(token_pk=issued.token.pk, actor=root)
    second = api_token_revoke(token_pk=issued.token.pk, actor=root)

    assert (first[1], second[1]) == (True, False)
    assert AuditLog.objects.filter(action="api_token.revoke").count() == 1


def test_a_token_past_its_date_is_refused(customer):
    issued = api_token_issue(user=customer, name="app", expires_at=timezone.now() + timedelta(minutes=5), actor=None)
    assert call(issued.key)[0] == 200

    ApiToken.objects.update(expires_at=timezone.now() - timedelta(seconds=1))

    assert error_code(issued.key) == (401, "token_expired")


def test_a_token_older_than_the_maximum_age_is_refused(customer, settings):
    issued = api_token_issue(user=customer, name="app", expires_at=None, actor=None)
    ApiToken.objects.update(created_at=timezone.now() - timedelta(days=31))
    assert call(issued.key)[0] == 200  # no maximum by default

    settings.API_TOKEN_MAX_AGE_DAYS = 30

    assert error_code(issued.key) == (401, "token_expired")


def test_legacy_drf_tokens_are_held_to_the_maximum_age_too(customer, settings):
    legacy = Token.objects.create(user=customer)
    Token.objects.filter(pk=legacy.pk).update(created=timezone.now() - timedelta(days=31))
    assert call(legacy.key)[0] == 200

    settings.API_TOKEN_MAX_AGE_DAYS = 30

    assert error_code(legacy.key) == (401, "token_expired")


def test_unknown_keys_and_inactive_users_are_refused(customer):
    issued = api_token_issue(user=customer, name="app", expires_at=None, actor=None)
    customer.is_active = False
    customer.save()

    assert error_code("f" * 40) == (401, "authentication_failed")
    assert error_code(issued.key) == (401, "authentication_failed")
    assert call(issued.key)[1]["error"]["message"] == "User inactive or deleted."


def test_last_use_is_recorded_at_most_once_a_minute(customer):
    issued = api_token_issue(user=customer, name="app", expires_at=None, actor=None)
    call(issued.key)
    first = ApiToken.objects.get().last_used_at
    call(issued.key)

    assert first is not None and ApiToken.objects.get().last_used_at == first
