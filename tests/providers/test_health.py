"""Provider health: the figures, the admin page with its reset action, and GET /api/health/payments.

Breakers and availability figures live in the real Redis, under a key prefix of each test's own.
"""

from __future__ import annotations

import os
import re
import socket
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
import redis
from django.contrib.auth.models import Permission, User
from django.contrib.contenttypes.models import ContentType
from django.contrib.messages import constants as message_levels
from django.test import Client
from django.urls import reverse
from rest_framework.authtoken.models import Token

from core.models import AuditLog
from providers.availability import record_call
from providers.base import Succeeded, Unknown
from providers.breaker import CircuitState, RedisCircuitBreaker, breaker_for
from providers.health import (
    BreakerStoreUnavailable,
    HealthStatus,
    MethodHealth,
    breaker_reset,
    overall_status,
    provider_health,
)
from providers.models import WebhookEvent

pytestmark = pytest.mark.django_db

OK = Succeeded(reference="po_1")
TIMEOUT = Unknown(reason="ReadTimeout: timed out")
FAILURE_THRESHOLD = 5  # PROVIDER_BREAKER_DEFAULTS
BASE_BACKOFF_SECONDS = 30.0
JITTER = 0.2
PAGE = "/admin/providers/health/"
API = "/api/health/payments"


# --- fixtures and helpers ---------------------------------------------------------------


@pytest.fixture(autouse=True)
def state_prefix(settings) -> Iterator[str]:
    """Breaker and availability keys of this test's own, deleted afterwards."""
    prefix = f"test:health:{uuid.uuid4().hex}"
    settings.PROVIDER_STATE_KEY_PREFIX = prefix
    settings.PROVIDER_BREAKERS = {}
    yield prefix
    client = redis.Redis.from_url(os.environ["REDIS_URL"])
    for key in client.scan_iter(match=f"{prefix}:*"):
        client.delete(key)
    client.close()


@pytest.fixture
def redis_down(settings) -> str:
    """Point provider state at a port nobody listens on."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    settings.REDIS_URL = f"redis://127.0.0.1:{port}/0"
    return settings.REDIS_URL


@pytest.fixture
def reset_permission() -> Permission:
    """The permission WebhookEvent.Meta will declare; created here until its migration exists."""
    permission, _ = Permission.objects.get_or_create(
        content_type=ContentType.objects.get_for_model(WebhookEvent),
        codename="reset_circuit_breaker",
        defaults={"name": "Can reset a provider circuit breaker"},
    )
    return permission


def staff_user(username: str, *codenames: str) -> User:
    user = User.objects.create_user(username, password="pw", is_staff=True)
    user.user_permissions.set(Permission.objects.filter(content_type__app_label="providers", codename__in=codenames))
    return user


def logged_in(user: User, **kwargs: bool) -> Client:
    client = Client(**kwargs)
    client.force_login(user)
    return client


@pytest.fixture
def viewer() -> User:
    return staff_user("viewer", "view_webhookevent")


@pytest.fixture
def operator(reset_permission: Permission) -> User:
    return staff_user("operator", "view_webhookevent", "reset_circuit_breaker")


def open_breaker(provider: str) -> None:
    breaker = breaker_for(provider)
    for _ in range(FAILURE_THRESHOLD):
        breaker.record(TIMEOUT)
    assert breaker.state().state == CircuitState.OPEN


def half_open_breaker(provider: str) -> None:
    """Opened an hour ago: the backoff (at most 30 s) is long over, so the next call is a trial."""
    breaker = breaker_for(provider, clock=lambda: time.time() - 3600)
    for _ in range(FAILURE_THRESHOLD):
        breaker.record(TIMEOUT)
    assert breaker_for(provider).state().state == CircuitState.HALF_OPEN


def calls(provider: str, method: str, *, ok: int, failed: int, ok_ms: float, failed_ms: float) -> None:
    for _ in range(ok):
        record_call(provider, method, OK, ok_ms)
    for _ in range(failed):
        record_call(provider, method, TIMEOUT, failed_ms)


def row_cells(html: str, provider: str) -> dict[str, str]:
    """The text of each cell of the provider's row, by the cell's class."""
    match = re.search(rf'<tr id="provider-{provider}">(.*?)</tr>', html, re.S)
    assert match, f"no row for {provider}"
    cells = re.findall(r'<td class="([^"]+)">(.*?)</td>', match.group(1), re.S)
    return {name: re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", text)).strip() for name, text in cells}


def row_html(html: str, provider: str) -> str:
    match = re.search(rf'<tr id="provider-{provider}">(.*?)</tr>', html, re.S)
    assert match
    return match.group(1)


def messages_of(response) -> list[tuple[int, str]]:
    return [(message.level, str(message)) for message in response.context["messages"]]


# --- provider_health() ------------------------------------------------------------------------


def test_provider_health_reports_breaker_and_availability_per_provider():
    before = datetime.now(UTC)
    open_breaker("stripe")
    half_open_breaker("gcash")
    calls("paypal", "payouts.create", ok=9, failed=1, ok_ms=100, failed_ms=300)  # exactly 90%: not below
    calls("maya", "checkout.create", ok=8, failed=2, ok_ms=50, failed_ms=250)  # 80%: below 90%

    health = {entry.provider: entry for entry in provider_health()}

    assert list(health) == ["stripe", "paypal", "maya", "gcash"]
    stripe = health["stripe"]
    assert (stripe.status, stripe.breaker_state, stripe.failures, stripe.breaker_error) == (
        HealthStatus.UNHEALTHY,
        "open",
        5,
        "",
    )
    assert stripe.opened_at is not None and stripe.retry_at is not None
    assert before - timedelta(seconds=1) <= stripe.opened_at <= datetime.now(UTC)
    backoff = (stripe.retry_at - stripe.opened_at).total_seconds()
    assert BASE_BACKOFF_SECONDS * (1 - JITTER) - 0.001 <= backoff <= BASE_BACKOFF_SECONDS + 0.001
    assert stripe.methods == []

    paypal = health["paypal"]
    assert (paypal.status, paypal.breaker_state, paypal.failures) == (HealthStatus.HEALTHY, "closed", 0)
    assert (paypal.opened_at, paypal.retry_at) == (None, None)
    [payouts] = paypal.methods
    assert (payouts.method, payouts.calls, payouts.successes) == ("payouts.create", 10, 9)
    assert payouts.success_rate == pytest.approx(0.9)
    assert payouts.avg_latency_ms == pytest.approx(120.0)
    assert payouts.below_threshold is False
    assert payouts.last_success_at is not None and payouts.last_failure_at is not None
    assert payouts.last_success_at >= before - timedelta(seconds=1)

    maya = health["maya"]
    assert (maya.status, maya.breaker_state) == (HealthStatus.DEGRADED, "closed")
    [checkout] = maya.methods
    assert (checkout.success_rate, checkout.avg_latency_ms, checkout.below_threshold) == (
        pytest.approx(0.8),
        pytest.approx(90.0),
        True,
    )

    gcash = health["gcash"]
    assert (gcash.status, gcash.breaker_state, gcash.failures) == (HealthStatus.DEGRADED, "half_open", 5)

    assert overall_status(list(health.values())) == HealthStatus.DEGRADED  # routing falls back around stripe


def test_success_rate_threshold_comes_from_settings(settings):
    calls("paypal", "payouts.create", ok=9, failed=1, ok_ms=100, failed_ms=300)
    settings.PROVIDER_HEALTH_MIN_SUCCESS_RATE = 0.95

    paypal = next(entry for entry in provider_health() if entry.provider == "paypal")

    assert paypal.status == HealthStatus.DEGRADED
    assert paypal.methods[0].below_threshold is True


def test_no_calls_and_closed_breakers_is_healthy():
    health = provider_health()

    assert [(entry.provider, entry.status, entry.breaker_state, entry.failures) for entry in health] == [
        ("stripe", HealthStatus.HEALTHY, "closed", 0),
        ("paypal", HealthStatus.HEALTHY, "closed", 0),
        ("maya", HealthStatus.HEALTHY, "closed", 0),
        ("gcash", HealthStatus.HEALTHY, "closed", 0),
    ]
    assert overall_status(health) == HealthStatus.HEALTHY


def test_redis_down_reports_breakers_as_unknown_instead_of_failing(redis_down):
    health = provider_health()

    assert [entry.provider for entry in health] == ["stripe", "paypal", "maya", "gcash"]
    for entry in health:
        assert (entry.status, entry.breaker_state, entry.failures, entry.methods) == (
            HealthStatus.DEGRADED,
            "unknown",
            None,
            [],
        )
        assert entry.breaker_error.startswith("ConnectionError: ")
        assert entry.availability_error.startswith("ConnectionError: ")
    assert overall_status(health) == HealthStatus.DEGRADED


def test_method_success_percent_is_none_without_calls():
    quiet = MethodHealth("payouts.create", 0, 0, None, None, None, None, below_threshold=False)

    assert quiet.success_percent is None


# --- breaker_reset() --------------------------------------------------------------------------


def test_breaker_reset_closes_the_circuit_and_audits(operator):
    open_breaker("stripe")

    before = breaker_reset(provider="stripe", actor=operator)

    assert (before.state, before.failures) == (CircuitState.OPEN, 5)
    after = breaker_for("stripe").state()
    assert (after.state, after.failures, after.times_opened, after.retry_at) == (CircuitState.CLOSED, 0, 0, None)
    row = AuditLog.objects.get()
    assert (row.action, row.actor, row.actor_repr) == ("providers.breaker.reset", operator, "operator")
    assert row.before["provider"] == "stripe"
    assert (row.before["state"], row.before["failures"], row.before["times_opened"]) == ("open", 5, 1)
    assert row.before["retry_at"] == before.retry_at.isoformat()
    assert row.after == {"provider": "stripe", "state": "closed", "failures": 0}


def test_breaker_reset_rolls_back_the_audit_row_when_redis_fails(operator, monkeypatch):
    open_breaker("stripe")

    def refuse(self: RedisCircuitBreaker) -> None:
        raise redis.ConnectionError("Connection refused")

    monkeypatch.setattr(RedisCircuitBreaker, "reset", refuse)

    with pytest.raises(BreakerStoreUnavailable) as raised:
        breaker_reset(provider="stripe", actor=operator)

    assert raised.value.http_status == 503
    assert "ConnectionError: Connection refused" in raised.value.message
    assert AuditLog.objects.count() == 0
    assert breaker_for("stripe").state().state == CircuitState.OPEN


def test_breaker_reset_with_redis_down_changes_nothing(operator, redis_down):
    with pytest.raises(BreakerStoreUnavailable):
        breaker_reset(provider="stripe", actor=operator)

    assert AuditLog.objects.count() == 0


# --- the admin page ---------------------------------------------------------------------------


def test_page_shows_each_provider_colour_coded_for_a_viewer(viewer):
    open_breaker("stripe")
    half_open_breaker("gcash")
    calls("paypal", "payouts.create", ok=9, failed=1, ok_ms=100, failed_ms=300)
    calls("maya", "checkout.create", ok=8, failed=2, ok_ms=50, failed_ms=250)
    retry_at = breaker_for("stripe").state().retry_at
    assert retry_at is not None

    response = logged_in(viewer).get(PAGE)

    assert response.status_code == 200
    html = response.content.decode()
    assert "<h1>Provider health</h1>" in html
    assert [p.provider for p in response.context["providers"]] == ["stripe", "paypal", "maya", "gcash"]
    stripe = row_cells(html, "stripe")
    assert (stripe["status"], stripe["breaker-state"], stripe["failures"]) == ("UNHEALTHY", "open", "5")
    assert stripe["retry-at"].startswith(retry_at.strftime("%Y-%m-%d %H:%M:%S"))
    assert stripe["methods"] == "No calls seen."
    assert 'class="breaker breaker-open"' in row_html(html, "stripe")

    paypal = row_cells(html, "paypal")
    assert (paypal["status"], paypal["breaker-state"], paypal["failures"], paypal["retry-at"]) == (
        "HEALTHY",
        "closed",
        "0",
        "-",
    )
    assert paypal["methods"].startswith("payouts.create: 90.0% of 10 calls, 120 ms; last success")
    assert 'class="breaker breaker-closed"' in row_html(html, "paypal")

    maya = row_cells(html, "maya")
    assert maya["status"] == "DEGRADED"
    assert maya["methods"].startswith("checkout.create: 80.0% of 10 calls, 90 ms")
    assert '<span class="below-threshold">80.0%</span>' in row_html(html, "maya")

    gcash = row_cells(html, "gcash")
    assert (gcash["status"], gcash["breaker-state"], gcash["failures"]) == ("DEGRADED", "half_open", "5")
    assert 'class="breaker breaker-half_open"' in row_html(html, "gcash")


def test_viewer_sees_no_reset_button(viewer, reset_permission):
    html = logged_in(viewer).get(PAGE).content.decode()

    assert "Reset breaker" not in html
    assert "/reset/" not in html
    assert "action" not in row_cells(html, "stripe")


def test_user_with_reset_permission_sees_one_reset_button_per_provider(operator):
    response = logged_in(operator).get(PAGE)

    html = response.content.decode()
    assert html.count('value="Reset breaker"') == 4
    for provider in ("stripe", "paypal", "maya", "gcash"):
        assert f'action="/admin/providers/health/{provider}/reset/"' in row_html(html, provider)
        assert 'name="csrfmiddlewaretoken"' in row_html(html, provider)


def test_reset_from_the_page_closes_the_breaker_and_is_audited(operator):
    open_breaker("stripe")
    client = logged_in(operator)

    response = client.post(reverse("providers_admin:breaker_reset", args=["stripe"]), follow=True)

    assert response.redirect_chain == [(PAGE, 302)]
    assert messages_of(response) == [(message_levels.SUCCESS, "The stripe circuit breaker was reset (it was open).")]
    assert row_cells(response.content.decode(), "stripe")["breaker-state"] == "closed"
    assert breaker_for("stripe").state().state == CircuitState.CLOSED
    row = AuditLog.objects.get()
    assert (row.action, row.actor, row.before["state"], row.after["state"]) == (
        "providers.breaker.reset",
        operator,
        "open",
        "closed",
    )
    assert row.ip == "127.0.0.1"


def test_reset_is_csrf_protected(operator):
    open_breaker("stripe")
    client = logged_in(operator, enforce_csrf_checks=True)
    url = reverse("providers_admin:breaker_reset", args=["stripe"])

    refused = client.post(url)

    assert refused.status_code == 403
    assert breaker_for("stripe").state().state == CircuitState.OPEN

    html = client.get(PAGE).content.decode()
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', row_html(html, "stripe")).group(1)
    accepted = client.post(url, {"csrfmiddlewaretoken": token})

    assert accepted.status_code == 302
    assert breaker_for("stripe").state().state == CircuitState.CLOSED


def test_reset_without_the_reset_permission_is_refused_with_a_message(viewer, reset_permission):
    open_breaker("stripe")

    response = logged_in(viewer).post(reverse("providers_admin:breaker_reset", args=["stripe"]), follow=True)

    assert messages_of(response) == [
        (
            message_levels.ERROR,
            "You do not have permission to do this. Ask an administrator for the permission "
            "'providers.reset_circuit_breaker' or a finance role with it.",
        )
    ]
    assert breaker_for("stripe").state().state == CircuitState.OPEN
    assert AuditLog.objects.count() == 0


def test_reset_of_an_unknown_provider_is_reported(operator):
    response = logged_in(operator).post("/admin/providers/health/venmo/reset/", follow=True)

    assert messages_of(response) == [
        (message_levels.ERROR, "There is no provider called 'venmo'. Pick a provider from the provider health page.")
    ]
    assert AuditLog.objects.count() == 0


def test_page_and_reset_are_forbidden_without_the_view_permission(reset_permission):
    open_breaker("stripe")
    client = logged_in(staff_user("nobody"))

    assert client.get(PAGE).status_code == 403
    assert client.post(reverse("providers_admin:breaker_reset", args=["stripe"])).status_code == 403
    assert breaker_for("stripe").state().state == CircuitState.OPEN


def test_page_sends_non_staff_to_the_admin_login():
    customer = User.objects.create_user("customer", password="pw")

    for client in (Client(), logged_in(customer)):
        response = client.get(PAGE)
        assert response.status_code == 302
        assert response["Location"] == f"/admin/login/?next={PAGE}"


def test_page_with_redis_down_shows_unknown_and_reset_reports_the_error(operator, redis_down):
    client = logged_in(operator)

    response = client.get(PAGE)

    assert response.status_code == 200
    html = response.content.decode()
    for provider in ("stripe", "paypal", "maya", "gcash"):
        cells = row_cells(html, provider)
        assert cells["status"] == "DEGRADED"
        assert cells["breaker-state"].startswith("unknown ConnectionError: ")
        assert cells["failures"] == "?"
        assert cells["methods"].startswith("Availability unknown: ConnectionError: ")

    reset = client.post(reverse("providers_admin:breaker_reset", args=["stripe"]), follow=True)

    assert messages_of(reset) == [
        (
            message_levels.ERROR,
            "The circuit breaker state could not be reached, so nothing was changed. "
            "Check that Redis is up (see /api/health/redis), then try again.",
        )
    ]
    assert AuditLog.objects.count() == 0


# --- GET /api/health/payments -----------------------------------------------------------------


def test_api_is_healthy_and_anonymous_gets_the_status_only():
    response = Client().get(API)

    assert response.status_code == 200
    assert response.json() == {"status": "HEALTHY"}
    assert response["Cache-Control"] == "no-store"


def test_api_gives_staff_the_details(viewer):
    calls("paypal", "payouts.create", ok=9, failed=1, ok_ms=100, failed_ms=300)

    response = logged_in(viewer).get(API)

    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "HEALTHY"
    assert [p["provider"] for p in body["providers"]] == ["stripe", "paypal", "maya", "gcash"]
    paypal = body["providers"][1]
    assert {key: paypal[key] for key in ("status", "breaker_state", "failures", "opened_at", "retry_at")} == {
        "status": "HEALTHY",
        "breaker_state": "closed",
        "failures": 0,
        "opened_at": None,
        "retry_at": None,
    }
    [payouts] = paypal["methods"]
    assert {key: payouts[key] for key in ("method", "calls", "successes", "below_threshold")} == {
        "method": "payouts.create",
        "calls": 10,
        "successes": 9,
        "below_threshold": False,
    }
    assert payouts["success_rate"] == pytest.approx(0.9)
    assert payouts["avg_latency_ms"] == pytest.approx(120.0)
    assert datetime.fromisoformat(payouts["last_failure_at"]) <= datetime.now(UTC)


def test_api_is_degraded_with_200_when_one_circuit_is_open(viewer):
    open_breaker("stripe")
    retry_at = breaker_for("stripe").state().retry_at

    anonymous = Client().get(API)
    staff = logged_in(viewer).get(API)

    assert (anonymous.status_code, anonymous.json()) == (200, {"status": "DEGRADED"})
    assert staff.status_code == 200
    body = staff.json()
    assert body["status"] == "DEGRADED"
    stripe = body["providers"][0]
    assert (stripe["provider"], stripe["status"], stripe["breaker_state"], stripe["failures"]) == (
        "stripe",
        "UNHEALTHY",
        "open",
        5,
    )
    assert datetime.fromisoformat(stripe["retry_at"]) == retry_at
    assert [p["status"] for p in body["providers"][1:]] == ["HEALTHY", "HEALTHY", "HEALTHY"]


def test_api_is_degraded_with_200_when_a_circuit_is_half_open():
    half_open_breaker("gcash")

    response = Client().get(API)

    assert (response.status_code, response.json()) == (200, {"status": "DEGRADED"})


def test_api_gives_non_staff_users_the_status_only():
    customer = User.objects.create_user("customer", password="pw")
    open_breaker("maya")

    response = logged_in(customer).get(API)

    assert (response.status_code, response.json()) == (200, {"status": "DEGRADED"})


def test_api_is_unhealthy_with_503_when_no_provider_can_take_payments():
    for provider in ("stripe", "paypal", "maya", "gcash"):
        open_breaker(provider)

    response = Client().get(API)

    assert (response.status_code, response.json()) == (503, {"status": "UNHEALTHY"})


def test_api_gives_token_authenticated_staff_the_details(viewer):
    token = Token.objects.create(user=viewer)

    response = Client().get(API, HTTP_AUTHORIZATION=f"Token {token.key}")

    assert response.status_code == 200
    assert len(response.json()["providers"]) == 4


def test_api_with_redis_down_is_degraded_not_an_error(viewer, redis_down):
    response = logged_in(viewer).get(API)

    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "DEGRADED"
    assert {p["breaker_state"] for p in body["providers"]} == {"unknown"}
    assert all(p["breaker_error"].startswith("ConnectionError: ") for p in body["providers"])
