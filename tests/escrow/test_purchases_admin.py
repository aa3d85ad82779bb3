"""The purchases admin: read-only money, actions that call the services and explain refusals."""

from __future__ import annotations

import uuid

import pytest
from django.contrib.auth.models import Permission

from core.models import AuditLog
from escrow.models import Purchase, PurchaseRefund
from escrow.purchases import purchase_create, purchase_report_delivery
from providers.sandbox.server import Fault
from tests.escrow.factories_purchases import buyer_create, deliverer_create, service_create

CHANGELIST = "/admin/escrow/purchase/"


@pytest.fixture(autouse=True)
def _isolated(settings, db):
    settings.PROVIDER_STATE_KEY_PREFIX = f"test:purchases-admin:{uuid.uuid4().hex}"
    settings.PROVIDER_RETRY_ATTEMPTS = 1
    service_create()


@pytest.fixture
def finance_client(client, django_user_model):
    user = django_user_model.objects.create_user("finance-admin", password="pw", is_staff=True)
    codenames = ("view_purchase", "refund_purchase", "sync_purchase", "view_purchaserefund")
    user.user_permissions.set(Permission.objects.filter(content_type__app_label="escrow", codename__in=codenames))
    client.force_login(user)
    return client


def captured_purchase(key: str = "k") -> Purchase:
    purchase = purchase_create(
        buyer=buyer_create(), service_code="phone-verification", currency="USD", payment_method="pm_card_visa",
        client_key=key,
    )  # fmt: skip
    return purchase_report_delivery(purchase_id=purchase.pk, actor=deliverer_create(), outcome="delivered")


def action(client, name: str, purchase: Purchase, **extra: str):
    data = {"action": name, "_selected_action": [str(purchase.pk)], **extra}
    return client.post(CHANGELIST, data, follow=True)


@pytest.mark.django_db
def test_finance_sees_purchases_with_money_formatted_and_read_only(sandbox, finance_client):
    purchase = captured_purchase()
    page = finance_client.get(f"{CHANGELIST}{purchase.pk}/change/").content.decode()
    assert "$100.00" in page and "captured" in page and f"purchase:{purchase.pk}:capture" in page
    assert 'name="amount_minor"' not in page  # nothing to edit
    assert finance_client.get(CHANGELIST + "?status__exact=captured").status_code == 200


@pytest.mark.django_db
def test_refund_part_parses_major_units_and_refunds_once_per_form(sandbox, finance_client):
    purchase = captured_purchase()
    page = action(finance_client, "refund_part", purchase).content.decode()
    assert 'name="amount"' in page and 'name="refund_key"' in page
    bad = action(finance_client, "refund_part", purchase, post="yes", amount="12.345", refund_key="f1").content
    assert b"more than 2 decimal places" in bad and not PurchaseRefund.objects.exists()
    for _ in range(2):  # the same form submitted twice
        done = action(finance_client, "refund_part", purchase, post="yes", amount="12.50", refund_key="f1")
    assert "refund of $12.50 succeeded" in done.content.decode()
    (refund,) = PurchaseRefund.objects.all()
    assert refund.amount_minor == 1_250 and sandbox.calls["stripe.refunds.create"] == 1
    too_much = action(finance_client, "refund_part", purchase, post="yes", amount="90", refund_key="f2")
    assert "more than what is left to refund" in too_much.content.decode()
    assert "Refund at most $87.50" in too_much.content.decode()


@pytest.mark.django_db
def test_cancel_and_refund_confirms_first_then_refunds_the_rest(sandbox, finance_client):
    purchase = captured_purchase()
    confirm = action(finance_client, "cancel_and_refund", purchase).content.decode()
    assert "This moves money" in confirm and sandbox.calls["stripe.refunds.create"] == 0
    done = action(finance_client, "cancel_and_refund", purchase, post="yes").content.decode()
    assert f"Purchase {purchase.pk}: refunded (cancelled), refunded $100.00" in done
    assert AuditLog.objects.filter(action="escrow.purchase.cancel", actor_repr="finance-admin").count() == 1


@pytest.mark.django_db
def test_sync_unknown_resolves_and_a_missing_permission_is_explained(sandbox, finance_client, django_user_model):
    purchase = purchase_create(
        buyer=buyer_create(), service_code="phone-verification", currency="USD", payment_method="pm_card_visa",
        client_key="s",
    )  # fmt: skip
    sandbox.add_fault(Fault(operation="stripe.payment_intents.capture", kind="error", status=502))
    purchase = purchase_report_delivery(purchase_id=purchase.pk, actor=deliverer_create(), outcome="delivered")
    assert purchase.status == "capture_unknown"
    done = action(finance_client, "sync_unknown", purchase).content.decode()
    assert f"Purchase {purchase.pk}: captured (delivered)" in done
    assert AuditLog.objects.filter(action="escrow.purchase.sync").count() == 1

    viewer = django_user_model.objects.create_user("viewer", is_staff=True)
    viewer.user_permissions.set(Permission.objects.filter(codename="view_purchase"))
    finance_client.force_login(viewer)
    refused = action(finance_client, "sync_unknown", purchase).content.decode()
    assert "escrow.sync_purchase" in refused


@pytest.mark.django_db
def test_catalogue_edits_and_their_prices_are_audited(admin_client):
    response = admin_client.post(
        "/admin/escrow/purchasableservice/add/",
        {
            "code": "id-check", "name": "ID check", "delivery_timeout": "00:10:00", "active": "on",
            "prices-TOTAL_FORMS": "1", "prices-INITIAL_FORMS": "0", "prices-MIN_NUM_FORMS": "0",
            "prices-MAX_NUM_FORMS": "1000", "prices-0-currency": "PHP", "prices-0-amount_minor": "5000",
        },
    )  # fmt: skip
    assert response.status_code == 302
    assert AuditLog.objects.filter(action="escrow.purchasableservice.add").count() == 1
    price = AuditLog.objects.get(action="escrow.serviceprice.change")
    assert price.after == {"currency": "PHP", "amount_minor": 5000}
    assert "₱50.00" in admin_client.get("/admin/escrow/purchasableservice/").content.decode()
