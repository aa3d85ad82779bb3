"""The schema tells the truth: schemathesis generates requests from our own OpenAPI schema, valid and invalid
(negative data), and sends them in-process to the WSGI app as anonymous, as a customer and as a finance
staff user. No answer is a 500 and every answer (status, headers, body) is one the schema documents."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
import schemathesis
from django.contrib.auth.models import Group, User
from django.core import signals
from django.db import close_old_connections
from hypothesis import HealthCheck, Phase, settings
from rest_framework.authtoken.models import Token
from schemathesis.specs.openapi.checks import ignored_auth, positive_data_acceptance

from config.wsgi import application
from tests.escrow.factories_deals import held_deal, seller
from tests.escrow.factories_purchases import service_create

EXAMPLES_PER_OPERATION = 12  # x operations x 3 callers: bounded so the whole run fits make test

api = schemathesis.openapi.from_wsgi("/api/schema/", application)  # drawn by drf-spectacular: no database


@pytest.fixture(autouse=True)
def _keep_the_test_connection() -> Iterator[None]:
    """Django closes the database connection when a request ends; the test's transaction lives on it (Django's
    own test client disconnects the same two receivers)."""
    for signal in (signals.request_started, signals.request_finished):
        signal.disconnect(close_old_connections)
    yield
    for signal in (signals.request_started, signals.request_finished):
        signal.connect(close_old_connections)


_CALLER_TOKEN: dict[str, str | None] = {"key": None}  # the token of the test's caller; None: anonymous


@api.auth(refresh_interval=None)
class CallerToken:
    """The caller's API token, set as real (explicit) credentials: schemathesis then also checks that the same
    request without them, or with forged ones, is refused."""

    def get(self, case: schemathesis.Case, context: object) -> str | None:
        return _CALLER_TOKEN["key"]

    def set(self, case: schemathesis.Case, data: str, context: object) -> None:
        case.headers = {**(case.headers or {}), "Authorization": f"Token {data}"}


@pytest.fixture(params=["anonymous", "customer", "staff"])
def caller(request: pytest.FixtureRequest, db, sandbox) -> Iterator[str]:
    if request.param != "anonymous":
        user = User.objects.create_user(f"fuzz-{request.param}", is_staff=request.param == "staff")
        if user.is_staff:
            user.groups.add(Group.objects.get(name="Finance viewer"))
        _CALLER_TOKEN["key"] = Token.objects.create(user=user).key
    yield request.param
    _CALLER_TOKEN["key"] = None


@api.parametrize()
@settings(
    max_examples=EXAMPLES_PER_OPERATION,
    deadline=None,
    derandomize=True,
    phases=[Phase.explicit, Phase.generate],
    suppress_health_check=list(HealthCheck),
)
def test_every_answer_is_documented_and_none_is_a_server_error(case: schemathesis.Case, caller: str) -> None:
    response = case.call()
    # Every other check of schemathesis runs. A request can match the schema and still break a business rule (a
    # deadline in the past, a service not in the catalogue): that 400 is documented, not a broken promise.
    case.validate_response(response, excluded_checks=[positive_data_acceptance])


@pytest.mark.django_db(transaction=True)  # commits run: the provider calls happen and the objects move on
def test_a_customers_own_objects_read_back_exactly_as_the_schema_says(sandbox) -> None:
    """Generated ids mostly miss; here the customer's real payments, deal and purchase are read back through the
    API, and each answer is checked against the schema."""
    customer = User.objects.create_user("schema-customer")
    auth = {"Authorization": f"Token {Token.objects.create(user=customer).key}"}
    card = _created(
        "/api/v1/payments/", auth, {"amount_minor": 5_000, "currency": "USD", "payment_method_token": "pm_card_visa"}
    )
    wallet = _created("/api/v1/payments/", auth, {"amount_minor": 50_000, "currency": "PHP", "provider": "gcash",
                                                  "method": "gcash"})  # fmt: skip
    service_create()
    purchase = _created(
        "/api/v1/purchases/",
        auth,
        {"service": "phone-verification", "currency": "USD", "payment_method": "pm_card_visa"},
    )
    deal = held_deal(customer, seller(sandbox))
    assert wallet["redirect_url"] and card["redirect_url"] is None

    reads = [
        ("/api/v1/payments/{reference}/", {"reference": card["reference"]}, {}),
        ("/api/v1/payments/{reference}/", {"reference": wallet["reference"]}, {"sync": "true"}),
        ("/api/v1/payments/methods/", {}, {"amount_minor": 5_000, "currency": "PHP"}),
        ("/api/v1/purchases/", {}, {}),
        ("/api/v1/purchases/{purchase_id}/", {"purchase_id": purchase["id"]}, {}),
        ("/api/v1/escrow/deals/", {}, {}),
        ("/api/v1/escrow/deals/{deal_id}/", {"deal_id": deal.pk}, {}),
        ("/api/v1/spend-limits/", {}, {"currency": "USD"}),
        ("/api/v1/payouts/my-payouts/", {}, {}),
    ]
    for path, path_parameters, query in reads:
        case = api[path]["GET"].Case(path_parameters=path_parameters, query=query)
        response = case.call(headers=auth)
        assert response.status_code == 200, (path, response.text)
        case.validate_response(response, excluded_checks=[positive_data_acceptance, ignored_auth])


def _created(path: str, auth: dict[str, str], body: dict[str, object]) -> dict[str, object]:
    case = api[path]["POST"].Case(body=body, headers={"Idempotency-Key": uuid.uuid4().hex})
    response = case.call(headers=auth)
    assert response.status_code == 201, response.text
    case.validate_response(response, excluded_checks=[positive_data_acceptance, ignored_auth])
    return response.json()
