import uuid

import pytest
from django.contrib.auth.models import Permission
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from providers.models import Payment

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("default_payment_config", "sandbox")]


@pytest.fixture(autouse=True)
def _own_breaker_state(settings):
    settings.PROVIDER_STATE_KEY_PREFIX = f"test:payments-api:{uuid.uuid4().hex}"
    settings.PROVIDER_RETRY_ATTEMPTS = 1


def client_for(user) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {Token.objects.create(user=user).key}")
    return client


@pytest.fixture
def buyer(django_user_model):
    return client_for(django_user_model.objects.create_user("buyer"))


@pytest.fixture
def finance(django_user_model):
    user = django_user_model.objects.create_user("finance", is_staff=True)
    user.user_permissions.add(*Permission.objects.filter(codename__in=["add_refund", "view_payment"]))
    return client_for(user)


CARD_PAYMENT = {
    "amount_minor": 10_000, "currency": "USD", "provider": "stripe", "method": "card",
    "payment_method_token": "pm_card_visa",
}  # fmt: skip


def test_create_payment_is_idempotent_and_visible_only_to_its_owner(buyer, django_user_model):
    created = buyer.post("/api/v1/payments/", CARD_PAYMENT, format="json", HTTP_IDEMPOTENCY_KEY="order-1")
    replay = buyer.post("/api/v1/payments/", CARD_PAYMENT, format="json", HTTP_IDEMPOTENCY_KEY="order-1")
    assert created.status_code == 201
    assert created.json()["status"] == "succeeded"
    assert replay.json() == created.json() and replay["Idempotent-Replayed"] == "true"
    assert Payment.objects.count() == 1

    reference = created.json()["reference"]
    assert buyer.get(f"/api/v1/payments/{reference}/?sync=true").json()["status"] == "succeeded"
    stranger = client_for(django_user_model.objects.create_user("stranger"))
    assert stranger.get(f"/api/v1/payments/{reference}/").json()["error"]["code"] == "not_found"


def test_bad_payment_requests_get_the_error_body(buyer):
    no_key = buyer.post("/api/v1/payments/", CARD_PAYMENT, format="json")
    bad_currency = buyer.post(
        "/api/v1/payments/", {**CARD_PAYMENT, "currency": "XYZ"}, format="json", HTTP_IDEMPOTENCY_KEY="k"
    )
    float_amount = buyer.post(
        "/api/v1/payments/", {**CARD_PAYMENT, "amount_minor": 10.5}, format="json", HTTP_IDEMPOTENCY_KEY="k2"
    )
    for response in (no_key, bad_currency, float_amount):
        assert response.status_code == 400
        assert {"user_message", "action_required"} <= response.json()["error"].keys()
    assert Payment.objects.count() == 0


def test_refunds_need_finance_permission(buyer, finance):
    reference = buyer.post("/api/v1/payments/", CARD_PAYMENT, format="json", HTTP_IDEMPOTENCY_KEY="o").json()[
        "reference"
    ]
    denied = buyer.post(
        f"/api/v1/payments/{reference}/refunds/", {"amount_minor": 100}, format="json", HTTP_IDEMPOTENCY_KEY="r"
    )
    assert denied.status_code == 403
    done = finance.post(
        f"/api/v1/payments/{reference}/refunds/", {"amount_minor": 2_500}, format="json", HTTP_IDEMPOTENCY_KEY="r"
    )
    assert (done.status_code, done.json()["status"], done.json()["amount_minor"]) == (201, "succeeded", 2_500)
    too_much = finance.post(
        f"/api/v1/payments/{reference}/refunds/", {"amount_minor": 7_501}, format="json", HTTP_IDEMPOTENCY_KEY="r2"
    )
    assert too_much.status_code == 400
    assert too_much.json()["error"]["details"]["refundable_minor"] == 7_500


def test_methods_with_fees_and_the_default_method(buyer):
    methods = buyer.get("/api/v1/payments/methods/", {"amount_minor": 100_000, "currency": "PHP"}).json()
    assert [(m["provider"], m["fee_minor"]) for m in methods["available"]] == [
        ("gcash", 4_500),
        ("maya", 4_000),
        ("stripe", 5_000),
    ]
    assert buyer.get("/api/v1/payments/default-method/").status_code == 404
    assert (
        buyer.put(
            "/api/v1/payments/default-method/", {"provider": "maya", "method": "maya_wallet"}, format="json"
        ).status_code
        == 200
    )
    assert buyer.get("/api/v1/payments/default-method/").json() == {"provider": "maya", "method": "maya_wallet"}
    again = buyer.get("/api/v1/payments/methods/", {"amount_minor": 100_000, "currency": "PHP"}).json()
    assert again["available"][0]["provider"] == "maya"
    assert (
        buyer.put("/api/v1/payments/default-method/", {"provider": "maya", "method": "nope"}, format="json").status_code
        == 400
    )


def test_staff_without_the_view_permission_cannot_read_or_sync_another_customers_payment(buyer, django_user_model):
    reference = buyer.post("/api/v1/payments/", CARD_PAYMENT, format="json", HTTP_IDEMPOTENCY_KEY="o-9").json()[
        "reference"
    ]
    bare_staff = client_for(django_user_model.objects.create_user("bare-staff", is_staff=True))
    for url in (f"/api/v1/payments/{reference}/", f"/api/v1/payments/{reference}/?sync=true"):
        answer = bare_staff.get(url)
        assert answer.status_code == 404 and answer.json()["error"]["code"] == "not_found"
    viewer = django_user_model.objects.create_user("viewer", is_staff=True)
    viewer.user_permissions.add(Permission.objects.get(codename="view_payment"))
    assert client_for(viewer).get(f"/api/v1/payments/{reference}/").json()["reference"] == reference
