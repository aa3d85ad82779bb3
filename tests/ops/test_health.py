"""GET /api/health and its parts: status codes and bodies with everything up, with Redis stopped (a dead port),
with circuits open, and with the Celery worker and beat heartbeats present, stale or missing."""

from __future__ import annotations

import time
from typing import Any

import pytest
from django.test import Client

from monitoring.heartbeat import stamp_write, worker_heartbeat_write
from providers.base import Unknown
from providers.breaker import CircuitState, breaker_for
from providers.models import Provider
from tests.ops.conftest import dead_port, make_staff

pytestmark = pytest.mark.django_db

ENDPOINTS = ("/api/health", "/api/health/database", "/api/health/redis", "/api/health/celery", "/api/health/payments")
STAFF_FIELDS = {"status", "reasons", "checked_at", "duration_ms"}


def get(path: str, user: Any = None) -> Any:
    client = Client()
    if user is not None:
        client.force_login(user)
    return client.get(path)


def open_circuit(provider: str) -> None:
    breaker = breaker_for(provider)
    for _ in range(5):  # PROVIDER_BREAKER_DEFAULTS failure_threshold
        breaker.record(Unknown(reason="ReadTimeout: timed out"))
    assert breaker.state().state == CircuitState.OPEN


@pytest.fixture
def broker_mode(settings) -> None:
    """Tasks go through the broker (not run eagerly), so the Celery check reads the heartbeats."""
    settings.CELERY_TASK_ALWAYS_EAGER = False


def all_alive(*, worker_age: float = 1.0, beat_age: float = 1.0, flow_age: float = 1.0) -> None:
    now = time.time()
    worker_heartbeat_write("celery@ops-test", now=now - worker_age)
    stamp_write("beat", now=now - beat_age)
    stamp_write("flow", now=now - flow_age)


# --- everything up -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ENDPOINTS)
def test_everything_up_is_healthy_and_anonymous_callers_get_the_status_only(path):
    response = get(path)

    assert response.status_code == 200
    assert response.json() == {"status": "HEALTHY"}
    assert response["Cache-Control"] == "no-store"


def test_staff_get_every_check_with_reasons_and_details(staff):
    body = get("/api/health", staff).json()

    assert STAFF_FIELDS <= set(body)
    assert body["status"] == "HEALTHY" and body["reasons"] == []
    assert set(body["checks"]) == {"database", "redis", "celery", "payments"}
    assert body["checks"]["database"]["vendor"] == "postgresql"
    assert body["checks"]["redis"]["configured"] is True
    assert [p["provider"] for p in body["checks"]["payments"]["providers"]] == list(Provider.values)


def test_non_staff_users_get_the_status_only(redis_down):
    customer = make_staff("customer", is_staff=False)
    assert get("/api/health/redis", customer).json() == {"status": "UNHEALTHY"}


# --- Redis stopped -----------------------------------------------------------------------------------------------


def test_redis_down_is_a_clear_503_on_its_endpoint(redis_down, staff):
    started = time.monotonic()
    response = get("/api/health/redis", staff)

    assert time.monotonic() - started < 3.0  # 0.5 s client timeouts, no retries
    assert response.status_code == 503
    body = response.json()
    assert body["status"] == "UNHEALTHY"
    assert body["url"] == redis_down.removeprefix("redis://")
    assert len(body["reasons"]) == 1 and "unreachable at 127.0.0.1:" in body["reasons"][0]
    assert "Celery's broker" in body["reasons"][0]


def test_redis_down_makes_the_overall_status_degraded_not_an_error(redis_down, staff):
    anonymous = get("/api/health")
    response = get("/api/health", staff)

    assert (anonymous.status_code, anonymous.json()) == (200, {"status": "DEGRADED"})
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "DEGRADED"
    assert body["checks"]["database"]["status"] == "HEALTHY"
    assert body["checks"]["redis"]["status"] == "UNHEALTHY"
    assert body["checks"]["payments"]["status"] == "DEGRADED"
    assert any(reason.startswith("redis: unreachable") for reason in body["reasons"])


def test_redis_down_leaves_payments_degraded_with_breakers_unknown(redis_down, staff):
    response = get("/api/health/payments", staff)

    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "DEGRADED"
    assert body["reasons"] == [
        "circuit breakers and availability are unreadable (Redis is down): payments are sent without breaker "
        "protection (they fail open)"
    ]
    assert {p["breaker_state"] for p in body["providers"]} == {"unknown"}


def test_redis_down_stops_celery_its_broker(redis_down, broker_mode, staff):
    response = get("/api/health/celery", staff)

    assert response.status_code == 503
    assert response.json()["reasons"] == ["the broker (Redis) is unreachable: no task is queued or run"]


def test_redis_down_leaves_the_database_healthy(redis_down):
    response = get("/api/health/database")
    assert (response.status_code, response.json()) == (200, {"status": "HEALTHY"})


# --- circuits ----------------------------------------------------------------------------------------------------


def test_one_circuit_open_is_degraded_with_the_provider_named(staff):
    open_circuit("stripe")

    payments = get("/api/health/payments", staff)
    overall = get("/api/health", staff)

    assert payments.status_code == 200
    body = payments.json()
    assert body["status"] == "DEGRADED"
    assert len(body["reasons"]) == 1 and body["reasons"][0].startswith("stripe: circuit open until ")
    assert body["reasons"][0].endswith("after 5 failures; routing skips it")
    stripe = next(p for p in body["providers"] if p["provider"] == "stripe")
    assert (stripe["status"], stripe["breaker_state"]) == ("UNHEALTHY", "open")
    assert (overall.status_code, overall.json()["status"]) == (200, "DEGRADED")
    assert "payments: " + body["reasons"][0] in overall.json()["reasons"]


def test_every_circuit_open_is_unhealthy_on_payments_only():
    for provider in Provider.values:
        open_circuit(provider)

    payments = get("/api/health/payments")
    overall = get("/api/health")

    assert (payments.status_code, payments.json()) == (503, {"status": "UNHEALTHY"})
    # the overall answer is what a load balancer probes: the web processes cannot reopen a provider
    assert (overall.status_code, overall.json()) == (200, {"status": "DEGRADED"})


# --- Celery heartbeats -------------------------------------------------------------------------------------------


def test_celery_is_healthy_with_fresh_worker_beat_and_heartbeat_task(broker_mode, staff):
    all_alive()

    response = get("/api/health/celery", staff)

    assert response.status_code == 200
    body = response.json()
    assert (body["status"], body["reasons"], body["mode"]) == ("HEALTHY", [], "broker")
    assert [worker["hostname"] for worker in body["workers"]] == ["celery@ops-test"]


def test_celery_without_a_live_worker_is_unhealthy(broker_mode, staff):
    all_alive(worker_age=600)

    response = get("/api/health/celery", staff)

    assert response.status_code == 503
    body = response.json()
    assert body["status"] == "UNHEALTHY"
    assert body["reasons"] == ["no worker heartbeat in the last 60 s (last seen 600 s ago): queued tasks are not run"]
    assert body["workers"] == [] and body["workers_gone"][0]["hostname"] == "celery@ops-test"


def test_celery_without_beat_is_unhealthy(broker_mode, staff):
    all_alive(beat_age=900)

    body = get("/api/health/celery", staff).json()

    assert body["status"] == "UNHEALTHY"
    assert body["reasons"] == ["beat has published nothing for over 180 s (last 900 s ago): scheduled jobs stop"]


def test_celery_never_seen_is_unhealthy_on_both_counts(broker_mode):
    response = get("/api/health/celery")
    assert (response.status_code, response.json()) == (503, {"status": "UNHEALTHY"})


def test_celery_with_a_stalled_queue_is_degraded(broker_mode, staff):
    all_alive(flow_age=400)

    response = get("/api/health/celery", staff)

    assert response.status_code == 200
    assert response.json()["status"] == "DEGRADED"
    assert response.json()["reasons"] == [
        "the every-minute heartbeat task has not run for 300 s (last 400 s ago): tasks wait"
    ]


def test_celery_stale_workers_degrade_the_overall_status_without_a_503(broker_mode):
    all_alive(worker_age=600)
    response = get("/api/health")
    assert (response.status_code, response.json()) == (200, {"status": "DEGRADED"})


def test_the_heartbeat_task_stamps_the_flow(broker_mode, staff):
    from monitoring.tasks import heartbeat_task

    all_alive(flow_age=400)
    heartbeat_task.apply()

    body = get("/api/health/celery", staff).json()
    assert body["status"] == "HEALTHY"
    assert body["heartbeat_task_ran_seconds_ago"] < 5


def test_beat_stamps_when_it_publishes_and_other_processes_do_not(broker_mode, monkeypatch):
    from celery import signals

    from monitoring import heartbeat

    monkeypatch.setattr(heartbeat, "_state", {"in_beat": False, "beat_stamped_at": 0.0})
    worker_heartbeat_write("celery@ops-test")
    stamp_write("flow")
    signals.after_task_publish.send(sender="payouts.sync_batches", headers={}, body=None)
    assert "beat has published nothing" in " ".join(get_reasons("/api/health/celery"))

    signals.beat_init.send(sender=None)  # this process is beat from now on
    signals.after_task_publish.send(sender="payouts.sync_batches", headers={}, body=None)

    assert get_reasons("/api/health/celery") == []


def get_reasons(path: str) -> list[str]:
    return get(path, make_staff(f"staff-{time.monotonic_ns()}")).json()["reasons"]


# --- the database ------------------------------------------------------------------------------------------------


def test_database_unreachable_is_503_overall_and_on_its_endpoint(monkeypatch, staff):
    """The checks' connection pointed at a dead port (the requests' own sessions still use the real one)."""
    from django.db import connections

    dead = connections.create_connection("default")
    dead.settings_dict = {**dead.settings_dict, "HOST": "127.0.0.1", "PORT": str(dead_port())}
    monkeypatch.setattr("monitoring.health.connection", dead)

    database = get("/api/health/database", staff)
    overall = get("/api/health", staff)
    anonymous = get("/api/health")

    assert database.status_code == 503
    assert database.json()["status"] == "UNHEALTHY"
    assert database.json()["reasons"][0].startswith("unreachable: OperationalError: ")
    assert (overall.status_code, overall.json()["status"]) == (503, "UNHEALTHY")
    assert overall.json()["checks"]["redis"]["status"] == "HEALTHY"
    assert (anonymous.status_code, anonymous.json()) == (503, {"status": "UNHEALTHY"})
