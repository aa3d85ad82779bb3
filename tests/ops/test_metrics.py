"""GET /metrics: refused to the public, served to allowed addresses and to the token, with django-prometheus's
request metrics and the business counters and gauges."""

from __future__ import annotations

import re
import uuid
from collections import Counter

import pytest
from django.contrib.auth.models import Permission, User
from django.test import Client
from prometheus_client import REGISTRY

from core.alerts import alert_raise
from core.money import Money
from payouts.models import PayoutCycle, WinnerSelection
from payouts.services import cycle_prepare, winnings_fund
from providers.models import MoneyMovement
from providers.payments import payment_initiate
from providers.routing import Choice
from tests.ops.test_health import open_circuit

pytestmark = pytest.mark.django_db

OUTSIDE = "203.0.113.7"  # TEST-NET-3: never in METRICS_ALLOWED_IPS
TOKEN = "metrics-" + "t" * 32
BUSINESS_METRICS = (
    "backoffice_money_movements_total",
    "backoffice_provider_call_seconds",
    "backoffice_payout_items_in_flight",
    "backoffice_provider_circuit_state",
    "backoffice_open_alerts",
    "backoffice_metrics_read_errors",
)


@pytest.fixture(autouse=True)
def _metrics_settings(settings):
    settings.METRICS_ALLOWED_IPS = ["127.0.0.0/8", "::1", "10.1.2.0/24"]
    settings.METRICS_TOKEN = TOKEN
    settings.PROVIDER_RETRY_ATTEMPTS = 1


def scrape(address: str = "127.0.0.1", **headers: str):
    return Client(REMOTE_ADDR=address).get("/metrics", **headers)


def sample(text: str, name: str, **labels: str) -> float | None:
    """The value of one sample in the exposition text, or None when it is not there."""
    wanted = ",".join(f'{key}="{value}"' for key, value in sorted(labels.items()))
    for line in text.splitlines():
        match = re.fullmatch(r"(\w+)(?:\{(.*)\})? (\S+)", line)
        if match and match.group(1) == name and ",".join(sorted((match.group(2) or "").split(","))) == wanted:
            return float(match.group(3))
    return None


# --- who may scrape ----------------------------------------------------------------------------------------------


def test_an_address_outside_the_allowed_ones_is_refused_without_the_token():
    response = scrape(OUTSIDE)

    assert response.status_code == 403
    error = response.json()["error"]
    assert error["code"] == "permission_denied"
    assert error["user_message"] == "Metrics are for the monitoring system only."
    assert b"backoffice_" not in response.content


@pytest.mark.parametrize("authorization", ["Bearer wrong", f"Token {TOKEN}", TOKEN, f"Bearer {TOKEN}x", ""])
def test_a_wrong_or_malformed_token_is_refused(authorization):
    assert scrape(OUTSIDE, HTTP_AUTHORIZATION=authorization).status_code == 403


def test_no_token_configured_means_no_token_is_accepted(settings):
    settings.METRICS_TOKEN = ""
    assert scrape(OUTSIDE, HTTP_AUTHORIZATION="Bearer ").status_code == 403


def test_a_forwarded_header_does_not_make_an_outside_address_allowed():
    assert scrape(OUTSIDE, HTTP_X_FORWARDED_FOR="127.0.0.1", HTTP_X_REAL_IP="127.0.0.1").status_code == 403


def test_the_token_is_served_from_anywhere_with_every_business_metric():
    response = scrape(OUTSIDE, HTTP_AUTHORIZATION=f"Bearer {TOKEN}")

    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/plain; version=")
    text = response.content.decode()
    for name in BUSINESS_METRICS:
        assert f"# TYPE {name} " in text, name
    assert "django_http_requests_total_by_method_total" in text  # django-prometheus's middleware


@pytest.mark.parametrize("address", ["127.0.0.1", "10.1.2.77", "::ffff:10.1.2.9"])
def test_allowed_addresses_are_served_without_the_token(address):
    assert scrape(address).status_code == 200


# --- the business metrics ----------------------------------------------------------------------------------------


def test_gauges_show_open_alerts_open_circuits_and_items_in_flight(django_user_model):
    alert_raise(key=f"ops-test:{uuid.uuid4().hex}", title="Something to look at")
    open_circuit("stripe")
    operator = django_user_model.objects.create_user("ops-operator", is_staff=True)
    operator.user_permissions.set(Permission.objects.filter(codename="prepare_payoutbatch"))
    operator = User.objects.get(pk=operator.pk)
    cycle = PayoutCycle.objects.create(name="Metrics")
    for n in range(3):
        WinnerSelection.objects.create(cycle=cycle, user=django_user_model.objects.create_user(f"winner-{n}"),
                                       amount_minor=1_000, currency="USD", recipient_type="EMAIL",
                                       recipient=f"w{n}@example.com")  # fmt: skip
    winnings_fund(amount=Money(100_000, "USD"), reference="metrics-pool")
    cycle_prepare(cycle_id=cycle.pk, actor=operator)

    text = scrape().content.decode()

    assert sample(text, "backoffice_open_alerts", severity="warning", status="open") == 1.0
    assert sample(text, "backoffice_provider_circuit_state", provider="stripe", state="open") == 1.0
    assert sample(text, "backoffice_provider_circuit_state", provider="stripe", state="closed") == 0.0
    assert sample(text, "backoffice_provider_circuit_state", provider="paypal", state="closed") == 1.0
    assert sample(text, "backoffice_payout_items_in_flight", status="NEW") == 3.0
    assert sample(text, "backoffice_metrics_read_errors", part="circuits") == 0.0


def test_with_redis_down_circuits_read_unknown_and_the_scrape_still_answers(redis_down):
    response = scrape()

    assert response.status_code == 200
    text = response.content.decode()
    assert sample(text, "backoffice_provider_circuit_state", provider="stripe", state="unknown") == 1.0
    assert sample(text, "backoffice_open_alerts", severity="critical", status="open") == 0.0


def test_a_payment_counts_its_movements_outcomes_and_the_provider_call_latency(
    sandbox, default_payment_config, django_capture_on_commit_callbacks
):
    before = _samples("backoffice_money_movements_total")
    calls_before = _samples("backoffice_provider_call_seconds_count")
    buyer = User.objects.create_user("ops-buyer")

    with django_capture_on_commit_callbacks(execute=True):
        payment = payment_initiate(user=buyer, amount=Money(10_000, "USD"), client_key="metrics-1",
                                   explicit=Choice("stripe", "card"), payment_method_token="pm_card_visa")  # fmt: skip

    assert payment.status == "succeeded"
    recorded = Counter((m.operation, m.provider, m.status) for m in MoneyMovement.objects.all())
    assert recorded and {status for _, _, status in recorded} == {"succeeded"}
    assert _increments(before, _samples("backoffice_money_movements_total")) == recorded
    calls = _increments(calls_before, _samples("backoffice_provider_call_seconds_count"))
    assert (
        calls
        == {("stripe", "payments.start", "success"): sandbox.calls["stripe.payment_intents.create"]}
        == {("stripe", "payments.start", "success"): 1}
    )
    text = scrape().content.decode()
    operation, provider, outcome = next(iter(recorded))
    assert sample(text, "backoffice_money_movements_total", operation=operation, provider=provider, outcome=outcome)


def _samples(name: str) -> dict[tuple[str, ...], float]:
    return {
        tuple(sample.labels.values()): sample.value
        for metric in REGISTRY.collect()
        for sample in metric.samples
        if sample.name == name
    }


def _increments(before: dict[tuple[str, ...], float], after: dict[tuple[str, ...], float]) -> Counter:
    return Counter({labels: int(value - before.get(labels, 0.0)) for labels, value in after.items()
                    if value != before.get(labels, 0.0)})  # fmt: skip
