"""The ledger API: who sees which accounts, balances in minor units, statements, and reversals."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import Permission, User
from django.urls import reverse
from django.utils import timezone
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from core.models import AuditLog
from core.money import Money
from ledger.models import Account, Transaction
from ledger.selectors import account_balance
from ledger.services import account_create, credit, debit, hold_create, transaction_post, transaction_reverse

pytestmark = pytest.mark.django_db

ACCOUNTS = reverse("ledger-api:account-list")


def usd(minor: int) -> Money:
    return Money(minor, "USD")


def account_url(code: str, view: str = "account-detail") -> str:
    return reverse(f"ledger-api:{view}", args=[code])


def reverse_url(transaction_id: int) -> str:
    return reverse("ledger-api:transaction-reverse", args=[transaction_id])


def make_user(username: str, *codenames: str, is_staff: bool = False) -> User:
    user = User.objects.create_user(username, password="pw", is_staff=is_staff)
    user.user_permissions.set(Permission.objects.filter(content_type__app_label="ledger", codename__in=codenames))
    return user


def client_for(user: User) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {Token.objects.create(user=user).key}")
    return client


def wallet_for(user: User, currency: str = "USD") -> Account:
    return account_create(
        code=f"user:{user.pk}:wallet:{currency}",
        name=f"{user.username} wallet",
        type="liability",
        currency=currency,
        owner_type="user",
        owner_id=str(user.pk),
    )


@pytest.fixture
def clearing() -> Account:
    return account_create(
        code="platform:clearing:USD", name="Clearing", type="asset", currency="USD", allow_negative=True
    )


@pytest.fixture
def alice() -> User:
    return make_user("alice")


@pytest.fixture
def alice_wallet(alice: User, clearing: Account) -> Account:
    wallet = wallet_for(alice)
    transaction_post(
        idempotency_key="fund:alice",
        kind="funding",
        legs=[debit(clearing.code, usd(10_000)), credit(wallet.code, usd(10_000))],
    )
    hold_create(
        idempotency_key="hold:alice",
        debit_account_code=wallet.code,
        credit_account_code=clearing.code,
        amount=usd(2_500),
        kind="payout",
    )
    return wallet


@pytest.fixture
def bob_wallet() -> Account:
    return wallet_for(make_user("bob"))


@pytest.fixture
def operator() -> User:
    return make_user("operator", "reverse_transaction", is_staff=True)


@pytest.fixture
def funding(clearing: Account, bob_wallet: Account) -> Transaction:
    return transaction_post(
        idempotency_key="fund:bob",
        kind="funding",
        description="Top-up",
        legs=[debit(clearing.code, usd(4_200)), credit(bob_wallet.code, usd(4_200))],
    )


# --- accounts -------------------------------------------------------------------


def test_user_lists_only_own_accounts_with_balances_in_minor_units(alice, alice_wallet, bob_wallet):
    response = client_for(alice).get(ACCOUNTS)

    assert response.status_code == 200
    assert response.json()["results"] == [
        {
            "code": alice_wallet.code,
            "name": "alice wallet",
            "type": "liability",
            "currency": "USD",
            "posted_minor": 10_000,
            "pending_out_minor": 2_500,
            "pending_in_minor": 0,
            "available_minor": 7_500,
        }
    ]


def test_staff_with_view_permission_lists_all_accounts(clearing, alice_wallet, bob_wallet):
    viewer = make_user("viewer", "view_account", is_staff=True)

    response = client_for(viewer).get(ACCOUNTS)

    assert response.status_code == 200
    results = {row["code"]: row for row in response.json()["results"]}
    assert set(results) == {clearing.code, alice_wallet.code, bob_wallet.code}
    # The hot clearing account's balance is the sum of its shards.
    assert (results[clearing.code]["posted_minor"], results[clearing.code]["pending_in_minor"]) == (10_000, 0)
    assert results[clearing.code]["pending_out_minor"] == 2_500


@pytest.mark.parametrize(("is_staff", "codename"), [(True, "view_hold"), (False, "view_account")])
def test_staff_flag_or_permission_alone_does_not_show_all_accounts(is_staff, codename, alice_wallet):
    user = make_user("half", codename, is_staff=is_staff)

    response = client_for(user).get(ACCOUNTS)

    assert response.status_code == 200
    assert response.json()["results"] == []


def test_user_gets_own_account(alice, alice_wallet):
    response = client_for(alice).get(account_url(alice_wallet.code))

    assert response.status_code == 200
    assert response.json()["available_minor"] == 7_500


def test_another_users_account_is_not_found(alice, bob_wallet):
    response = client_for(alice).get(account_url(bob_wallet.code))

    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"
    assert response.json()["error"]["details"] == {"account": bob_wallet.code}


def test_staff_with_view_permission_gets_any_account(bob_wallet, funding):
    viewer = make_user("viewer", "view_account", is_staff=True)

    response = client_for(viewer).get(account_url(bob_wallet.code))

    assert response.status_code == 200
    assert response.json()["posted_minor"] == 4_200


# --- statements -----------------------------------------------------------------


def test_statement_defaults_to_the_last_30_days(alice, alice_wallet):
    response = client_for(alice).get(account_url(alice_wallet.code, "account-statement"))

    assert response.status_code == 200
    body = response.json()
    assert (body["account"], body["currency"], body["opening_minor"], body["closing_minor"]) == (
        alice_wallet.code,
        "USD",
        0,
        10_000,
    )
    assert [(line["kind"], line["amount_minor"], line["balance_after_minor"]) for line in body["lines"]] == [
        ("funding", 10_000, 10_000)
    ]


def test_statement_window_gives_opening_lines_and_closing(alice, alice_wallet, clearing):
    between = timezone.now()
    transaction_post(
        idempotency_key="spend:alice",
        kind="purchase",
        description="Verification",
        legs=[debit(alice_wallet.code, usd(1_500)), credit(clearing.code, usd(1_500))],
    )
    until = timezone.now()

    response = client_for(alice).get(
        account_url(alice_wallet.code, "account-statement"), {"since": between.isoformat(), "until": until.isoformat()}
    )

    assert response.status_code == 200
    body = response.json()
    assert (body["opening_minor"], body["closing_minor"]) == (10_000, 8_500)
    assert [(line["description"], line["amount_minor"], line["balance_after_minor"]) for line in body["lines"]] == [
        ("Verification", -1_500, 8_500)
    ]


@pytest.mark.parametrize(
    ("query", "field"),
    [({"since": "yesterday"}, "since"), ({"since": "2026-01-02T00:00:00Z", "until": "2026-01-01T00:00:00Z"}, "since")],
)
def test_statement_rejects_a_bad_window(alice, alice_wallet, query, field):
    response = client_for(alice).get(account_url(alice_wallet.code, "account-statement"), query)

    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_request"
    assert field in response.json()["error"]["details"]["fields"]


def test_statement_of_another_users_account_is_not_found(alice, bob_wallet):
    response = client_for(alice).get(account_url(bob_wallet.code, "account-statement"))

    assert response.status_code == 404


# --- reversals ------------------------------------------------------------------


def test_operator_reverses_a_transaction(operator, funding, bob_wallet, clearing):
    response = client_for(operator).post(
        reverse_url(funding.pk), {"reason": "duplicate"}, format="json", HTTP_IDEMPOTENCY_KEY="rev-1"
    )

    assert response.status_code == 201
    reversal = Transaction.objects.get(reverses=funding)
    body = response.json()
    assert (body["id"], body["kind"], body["reverses"]) == (reversal.pk, "reversal", funding.pk)
    assert body["description"] == f"Reversal of #{funding.pk}: duplicate"
    assert body["entries"] == [
        {"account": clearing.code, "amount_minor": -4_200, "currency": "USD"},
        {"account": bob_wallet.code, "amount_minor": 4_200, "currency": "USD"},
    ]
    assert account_balance(bob_wallet).posted == usd(0)
    audit = AuditLog.objects.get(action="ledger.transaction.reverse")
    assert (audit.actor, audit.object_id) == (operator, str(funding.pk))


@pytest.mark.parametrize(
    ("is_staff", "codenames"),
    [(False, ("reverse_transaction",)), (True, ("view_transaction",)), (False, ())],
)
def test_reverse_needs_staff_and_permission(is_staff, codenames, funding):
    user = make_user("someone", *codenames, is_staff=is_staff)

    response = client_for(user).post(
        reverse_url(funding.pk), {"reason": "nope"}, format="json", HTTP_IDEMPOTENCY_KEY="rev-1"
    )

    assert response.status_code == 403
    assert response.json()["error"]["code"] == "permission_denied"
    assert response.json()["error"]["details"] == {"permission": "ledger.reverse_transaction"}
    assert not Transaction.objects.filter(reverses=funding).exists()


@pytest.mark.parametrize("body", [{}, {"reason": ""}, {"reason": "   "}])
def test_reverse_needs_a_reason(operator, funding, body):
    response = client_for(operator).post(reverse_url(funding.pk), body, format="json", HTTP_IDEMPOTENCY_KEY="rev-1")

    assert response.status_code == 400
    assert "reason" in response.json()["error"]["details"]["fields"]
    assert not Transaction.objects.filter(reverses=funding).exists()


def test_reverse_unknown_transaction_is_not_found(operator):
    response = client_for(operator).post(reverse_url(999_999), {"reason": "x"}, format="json", HTTP_IDEMPOTENCY_KEY="k")

    assert response.status_code == 404
    assert response.json()["error"]["details"] == {"transaction_id": 999_999}


def test_reversing_twice_is_a_conflict(operator, funding):
    first = transaction_reverse(transaction_id=funding.pk, reason="first", actor=operator)

    response = client_for(operator).post(
        reverse_url(funding.pk), {"reason": "again"}, format="json", HTTP_IDEMPOTENCY_KEY="rev-2"
    )

    assert response.status_code == 409
    error = response.json()["error"]
    assert (error["code"], error["retryable"]) == ("already_reversed", False)
    assert error["details"] == {"transaction_id": funding.pk, "reversal_id": first.pk}
    assert Transaction.objects.filter(reverses__isnull=False).count() == 1
