"""Creating what escrow and purchases need in the admin: seller accounts linked to a Stripe connected account
(looked up through the provider client, activation state shown), and services with their prices; plus the
catalogue a client app buys from."""

from __future__ import annotations

import html
import uuid

import pytest
from django.contrib.messages import constants as message_levels
from django.contrib.messages import get_messages
from django.urls import reverse
from rest_framework.test import APIClient

from core.models import AuditLog
from escrow.admin.sellers import NOT_ACTIVE
from escrow.models import PurchasableService, SellerAccount, ServicePrice
from providers.sandbox import stripe as stripe_sandbox
from tests.escrow.factories_deals import UserFactory, tier
from tests.escrow.factories_purchases import service_create
from tests.staff import client_for, member

pytestmark = pytest.mark.django_db

SELLER_ADD = reverse("admin:escrow_selleraccount_add")
SERVICE_ADD = reverse("admin:escrow_purchasableservice_add")


@pytest.fixture(autouse=True)
def _settings(settings):
    settings.PROVIDER_STATE_KEY_PREFIX = f"test:escrow-admin-create:{uuid.uuid4().hex}"
    settings.PROVIDER_RETRY_ATTEMPTS = 1


def said(response) -> list[tuple[int, str]]:
    return [(message.level, str(message)) for message in get_messages(response.wsgi_request)]


def new_account_id() -> str:
    return f"acct_{uuid.uuid4().hex[:16]}"


# --- seller accounts ------------------------------------------------------------------------------------------


def test_an_approver_links_a_seller_to_an_active_connected_account(sandbox):
    approver, seller_user, growth = member("Finance approver"), UserFactory(), tier("growth", 800)
    account_id = new_account_id()
    stripe_sandbox.account_set(sandbox, account_id, transfers="active")
    sandbox.calls.clear()

    response = client_for(approver).post(
        SELLER_ADD, {"user": seller_user.pk, "stripe_account_id": account_id, "commission_tier": growth.pk}
    )

    assert response.status_code == 302, response.content[:2000]
    seller = SellerAccount.objects.get(stripe_account_id=account_id)
    assert (seller.user, seller.commission_tier, seller.can_receive_transfers) == (seller_user, growth, True)
    assert seller.account_updated_at is not None
    assert sandbox.calls["stripe.accounts.retrieve"] == 1  # looked up once, while the form was checked
    audit = AuditLog.objects.get(action="escrow.selleraccount.link")
    assert (audit.actor, audit.object_id) == (approver, str(seller.pk))
    assert audit.after == {"user": seller_user.pk, "stripe_account_id": account_id, "commission_tier": "growth",
                           "transfers": "active"}  # fmt: skip
    assert (message_levels.SUCCESS, f"{account_id}: Active: can receive transfers.") in said(response)


def test_a_seller_not_yet_onboarded_is_linked_shown_not_active_and_refreshed_from_stripe(sandbox):
    approver, account_id = member("Finance approver"), new_account_id()
    stripe_sandbox.account_set(sandbox, account_id, transfers="pending")
    client = client_for(approver)
    client.post(SELLER_ADD, {"user": UserFactory().pk, "stripe_account_id": account_id,
                             "commission_tier": tier().pk})  # fmt: skip
    seller = SellerAccount.objects.get(stripe_account_id=account_id)
    assert not seller.can_receive_transfers
    page = client.get(reverse("admin:escrow_selleraccount_change", args=[seller.pk])).content.decode()
    assert NOT_ACTIVE in html.unescape(page) and 'name="stripe_account_id"' not in page

    stripe_sandbox.account_set(sandbox, account_id, transfers="active")  # the seller finished onboarding
    changelist = reverse("admin:escrow_selleraccount_changelist")
    response = client.post(changelist, {"action": "refresh_from_stripe", "_selected_action": [str(seller.pk)]})

    assert SellerAccount.objects.get(pk=seller.pk).can_receive_transfers
    assert (message_levels.SUCCESS, f"{account_id}: Active: can receive transfers.") in said(response)
    refresh = AuditLog.objects.get(action="escrow.selleraccount.refresh")
    assert (refresh.before, refresh.after) == (
        {"can_receive_transfers": False}, {"can_receive_transfers": True, "transfers": "active"}
    )  # fmt: skip


def test_an_id_stripe_does_not_know_is_a_form_error_and_nothing_is_saved(sandbox):
    account_id = new_account_id()

    response = client_for(member("Finance approver")).post(
        SELLER_ADD, {"user": UserFactory().pk, "stripe_account_id": account_id, "commission_tier": tier().pk}
    )

    assert response.status_code == 200
    assert f"Stripe has no connected account {account_id} for this platform." in response.content.decode()
    assert not SellerAccount.objects.exists() and not AuditLog.objects.exists()


@pytest.mark.parametrize("account_id", ["", "acct_", "ba_123", "acct_12 34", "acct_<script>"])
def test_a_malformed_account_id_is_refused_before_stripe_is_asked(sandbox, account_id):
    sandbox.calls.clear()

    response = client_for(member("Finance approver")).post(
        SELLER_ADD, {"user": UserFactory().pk, "stripe_account_id": account_id, "commission_tier": tier().pk}
    )

    assert response.status_code == 200
    assert sum(sandbox.calls.values()) == 0
    assert not SellerAccount.objects.exists() and not AuditLog.objects.exists()


def test_an_inactive_tier_cannot_be_given_to_a_new_seller(sandbox):
    account_id, retired = new_account_id(), tier("retired", 300)
    retired.active = False
    retired.save()
    stripe_sandbox.account_set(sandbox, account_id, transfers="active")

    response = client_for(member("Finance approver")).post(
        SELLER_ADD, {"user": UserFactory().pk, "stripe_account_id": account_id, "commission_tier": retired.pk}
    )

    assert response.status_code == 200 and "Select a valid choice" in response.content.decode()
    assert not SellerAccount.objects.exists()


def test_an_operator_may_see_but_not_add_seller_accounts(sandbox):
    operator, account_id = member("Finance operator"), new_account_id()
    stripe_sandbox.account_set(sandbox, account_id, transfers="active")
    client = client_for(operator)

    assert client.get(SELLER_ADD).status_code == 403
    response = client.post(SELLER_ADD, {"user": UserFactory().pk, "stripe_account_id": account_id,
                                        "commission_tier": tier().pk})  # fmt: skip
    assert response.status_code == 403
    assert not SellerAccount.objects.exists() and not AuditLog.objects.exists()


# --- services and prices --------------------------------------------------------------------------------------


def service_form(code: str = "id-check", **price: str) -> dict[str, str]:
    return {
        "code": code, "name": "ID check", "delivery_timeout": "00:10:00", "active": "on",
        "prices-TOTAL_FORMS": "1", "prices-INITIAL_FORMS": "0", "prices-MIN_NUM_FORMS": "0",
        "prices-MAX_NUM_FORMS": "1000", "prices-0-currency": price.get("currency", "PHP"),
        "prices-0-amount_minor": price.get("amount_minor", "5000"),
    }  # fmt: skip


def test_an_approver_creates_a_service_priced_in_minor_units_and_clients_see_it_in_the_catalogue():
    approver = member("Finance approver")

    response = client_for(approver).post(SERVICE_ADD, service_form(currency="PHP", amount_minor="5000"))

    assert response.status_code == 302
    service = PurchasableService.objects.get(code="id-check")
    assert list(service.prices.values_list("currency", "amount_minor")) == [("PHP", 5000)]
    assert AuditLog.objects.filter(action="escrow.purchasableservice.add", actor=approver).count() == 1
    assert AuditLog.objects.get(action="escrow.serviceprice.change").after == {"currency": "PHP", "amount_minor": 5000}
    client = APIClient()
    client.force_authenticate(UserFactory())
    catalogue = client.get("/api/v1/purchases/services/").json()
    assert catalogue["results"] == [
        {"code": "id-check", "name": "ID check", "delivery_timeout_seconds": 600,
         "prices": [{"currency": "PHP", "amount_minor": 5000}]}
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("currency", "amount_minor", "says"),
    [
        ("USD", "0", "the amount must be more than zero, got 0"),
        ("USD", "-100", "the amount must be more than zero, got -100"),
        ("USD", "10000000000", "the amount is more than the maximum of $99,999,999.00"),
        ("JPY", "100000000", "the amount is more than the maximum of ¥99,999,999"),
        ("USD", "99999999999999999999", "Ensure this value is less than or equal to 9223372036854775807."),
        ("USD", "1.50", "Enter a whole number."),
        ("usd", "100", "currency must be an upper-case ISO 4217 code, got 'usd'"),
        ("ABC", "100", "unknown currency 'ABC': use an ISO 4217 code such as USD"),
    ],
)
def test_a_bad_price_is_refused_with_what_is_wrong_and_nothing_is_written(currency, amount_minor, says):
    response = client_for(member("Finance approver")).post(
        SERVICE_ADD, service_form(currency=currency, amount_minor=amount_minor)
    )

    assert response.status_code == 200
    assert says in html.unescape(response.content.decode())
    assert not PurchasableService.objects.exists() and not ServicePrice.objects.exists()
    assert not AuditLog.objects.exists()


def test_an_operator_may_not_create_services():
    client = client_for(member("Finance operator"))

    assert client.get(SERVICE_ADD).status_code == 403
    assert client.post(SERVICE_ADD, service_form()).status_code == 403
    assert not PurchasableService.objects.exists() and not AuditLog.objects.exists()


# --- the catalogue API ----------------------------------------------------------------------------------------


def test_the_catalogue_lists_active_services_only_and_needs_a_signed_in_client():
    service_create(code="phone-verification", prices={"USD": 150, "PHP": 7_500})
    retired = service_create(code="fax-check")
    retired.active = False
    retired.save()
    client = APIClient()

    anonymous = client.get("/api/v1/purchases/services/")
    client.force_authenticate(UserFactory())
    listed = client.get("/api/v1/purchases/services/").json()

    assert anonymous.status_code == 401 and anonymous.json()["error"]["code"] == "not_authenticated"
    assert [(s["code"], s["prices"]) for s in listed["results"]] == [
        ("phone-verification", [{"currency": "PHP", "amount_minor": 7_500}, {"currency": "USD", "amount_minor": 150}])
    ]
