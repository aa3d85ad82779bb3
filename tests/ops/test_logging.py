"""Logs as they reach standard error: one JSON object a line for structlog and stdlib loggers alike, personal data
redacted in the message, the fields and exception text, and the request id following the work into Celery tasks
(eagerly here, and through a real worker and broker in the slow test)."""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
import redis
import structlog

from config.celery import app
from core.context import RequestContext, bound_context, bound_request_id
from monitoring.health import check_celery
from tests.ops.celery_tasks import log_request_id_task

ROOT = Path(__file__).resolve().parents[2]
EMAIL, PHONE, CARD = "jane.doe@example.com", "+63 917 123 4567", "4111 1111 1111 1111"
SECRETS = (EMAIL, PHONE, CARD, "4111111111111111", "bob@example.org", "5555555555554444", "0917-123-4567")


def json_lines(text: str) -> list[dict[str, Any]]:
    """Every line of `text` parsed as JSON: a line that is not JSON fails the test."""
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def event(text: str, name: str) -> dict[str, Any]:
    (found,) = [line for line in json_lines(text) if line["event"] == name]
    return found


def assert_no_secrets(text: str) -> None:
    for secret in SECRETS:
        assert secret not in text, secret


# --- redaction -----------------------------------------------------------------------------------------------------


def test_our_structlog_events_are_json_with_pii_redacted_in_message_and_fields(capsys):
    structlog.get_logger("payments.ops_test").info(
        f"refund for {EMAIL}, card {CARD}, phone {PHONE}",
        email="someone@example.net",
        phone_number="not even a phone number",
        note="call 0917-123-4567 or +1 (555) 123-4567",
        customer={"contact": "bob@example.org", "cards": ["5555555555554444"], "pan": 4242424242424242},
        amount_minor=12_345,
        reference="pi_3NabcDEF",
    )

    err = capsys.readouterr().err
    assert_no_secrets(err)
    line = json_lines(err)[-1]
    assert line["event"] == ("refund for [redacted email], card [redacted card ending 1111], phone [redacted phone]")
    assert line["email"] == line["phone_number"] == "[redacted]"  # personal whatever they hold
    assert line["note"] == "call [redacted phone] or [redacted phone]"
    assert line["customer"] == {
        "contact": "[redacted email]",
        "cards": ["[redacted card ending 4444]"],
        "pan": "[redacted]",
    }
    assert (line["amount_minor"], line["reference"]) == (12_345, "pi_3NabcDEF")  # money and ids stay
    assert (line["level"], line["logger"]) == ("info", "payments.ops_test")
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d+Z", line["timestamp"])


def test_stdlib_loggers_django_and_celery_alike_are_json_and_redacted(capsys):
    logging.getLogger("django.request").warning(
        "Bad request from %s with card %s", EMAIL, "4111111111111111", extra={"customer_phone": PHONE}
    )
    logging.getLogger("celery.app.trace").info("Task for bob@example.org succeeded")

    err = capsys.readouterr().err
    assert_no_secrets(err)
    django_line, celery_line = json_lines(err)[-2:]
    assert django_line["event"] == "Bad request from [redacted email] with card [redacted card ending 1111]"
    assert (django_line["level"], django_line["logger"]) == ("warning", "django.request")
    assert django_line["customer_phone"] == "[redacted phone]"
    assert (celery_line["event"], celery_line["logger"]) == ("Task for [redacted email] succeeded", "celery.app.trace")


def test_exception_text_is_redacted(capsys):
    try:
        raise ValueError(f"card {CARD} declined for {EMAIL}")
    except ValueError:
        structlog.get_logger("payments.ops_test").exception("payment.failed")

    err = capsys.readouterr().err
    assert_no_secrets(err)
    line = event(err, "payment.failed")
    assert "ValueError: card [redacted card ending 1111] declined for [redacted email]" in line["exception"]


def test_numbers_that_are_not_cards_or_phones_stay(capsys):
    structlog.get_logger("ops_test").info(
        "totals", epoch=1733580000, amount_minor=1234567890123, not_luhn="4111111111111112", day="2026-12-07"
    )
    line = event(capsys.readouterr().err, "totals")
    assert (line["epoch"], line["amount_minor"]) == (1733580000, 1234567890123)
    assert (line["not_luhn"], line["day"]) == ("4111111111111112", "2026-12-07")


# --- the request id ------------------------------------------------------------------------------------------------


@pytest.mark.django_db
def test_a_request_gets_an_id_and_keeps_a_sane_incoming_one(client):
    given = client.get("/api/health", HTTP_X_REQUEST_ID="edge-req-1")
    made = client.get("/api/health")
    insane = client.get("/api/health", HTTP_X_REQUEST_ID="x" * 65)

    assert given["X-Request-ID"] == "edge-req-1"
    assert re.fullmatch(r"[0-9a-f]{32}", made["X-Request-ID"])
    assert re.fullmatch(r"[0-9a-f]{32}", insane["X-Request-ID"])


def test_log_lines_carry_the_bound_request_id(capsys):
    with bound_context(RequestContext(request_id="req-ops-1")):
        structlog.get_logger("ops_test").info("inside")
        logging.getLogger("django.server").info("inside too")
    structlog.get_logger("ops_test").info("outside")

    lines = {line["event"]: line for line in json_lines(capsys.readouterr().err)}
    assert lines["inside"]["request_id"] == lines["inside too"]["request_id"] == "req-ops-1"
    assert "request_id" not in lines["outside"]


def eager_result(result: Any) -> Any:
    """An eager task's value. Celery's join guard is one flag for the whole process, and eager tasks other tests
    ran from several threads at once can leave it set; an eager result is already there, nothing to wait on."""
    return result.get(disable_sync_subtasks=False)


def test_an_eager_task_runs_under_the_id_of_the_request_that_queued_it(capsys):
    with bound_context(RequestContext(request_id="req-ops-2")):
        seen = eager_result(log_request_id_task.delay("eager-1"))
        assert bound_request_id() == "req-ops-2"  # given back after the task
    assert bound_request_id() is None

    assert seen == "req-ops-2"
    line = event(capsys.readouterr().err, "ops_test.task_ran")
    assert (line["request_id"], line["marker"]) == ("req-ops-2", "eager-1")
    assert line["customer_email"] == "[redacted email]"


def test_a_task_queued_with_an_explicit_id_or_none_at_all():
    explicit = eager_result(log_request_id_task.apply_async(args=["eager-2"], headers={"request_id": "hdr-ops-3"}))
    fresh = eager_result(log_request_id_task.delay("eager-3"))

    assert explicit == "hdr-ops-3"
    assert fresh is not None and re.fullmatch(r"[0-9a-f]{32}", fresh)
    assert bound_request_id() is None


# --- a real worker -------------------------------------------------------------------------------------------------


def _wait_for(predicate: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.mark.slow
def test_a_real_worker_logs_json_under_the_publishers_request_id_and_beats(tmp_path, settings):
    """A worker over the real broker (its own queue): the request id goes in the message headers, the task's lines
    and Celery's own are JSON on standard error, and the worker's heartbeat is what /api/health/celery reads."""
    queue, hostname = f"ops-test-{uuid.uuid4().hex[:8]}", f"ops-{uuid.uuid4().hex[:8]}@localhost"
    log_path = tmp_path / "worker.log"
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "tests.settings", "REDIS_URL": settings.REDIS_URL,
           "HEALTH_KEY_PREFIX": settings.HEALTH_KEY_PREFIX, "LOG_FORMAT": "json", "LOG_LEVEL": "INFO"}  # fmt: skip
    env.pop("PYTEST_XDIST_WORKER", None)  # the Redis database as given, not counted down again
    command = [sys.executable, "-m", "celery", "-A", "config", "worker", "-P", "solo", "-Q", queue, "-n", hostname,
               "-I", "tests.ops.celery_tasks", "--without-gossip", "--without-mingle", "-l", "INFO"]  # fmt: skip
    with log_path.open("w") as log_file:
        worker = subprocess.Popen(  # noqa: S603 - our own interpreter and Celery
            command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=log_file
        )
    try:
        client = redis.Redis.from_url(settings.REDIS_URL)
        _wait_for(lambda: client.zscore(f"{settings.HEALTH_KEY_PREFIX}:workers", hostname), 60, "the heartbeat")
        settings.CELERY_TASK_ALWAYS_EAGER = False
        celery = check_celery()
        assert hostname in [worker["hostname"] for worker in celery.details["workers"]]

        with bound_context(RequestContext(request_id="req-ops-worker")):
            app.send_task("tests.ops.log_request_id", args=["worker-1"], queue=queue)
        _wait_for(lambda: "ops_test.task_ran" in log_path.read_text(), 30, "the task's log line")
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.wait(timeout=30)

    text = log_path.read_text()
    lines = json_lines(text)  # every line the worker wrote is JSON
    task_line = next(line for line in lines if line["event"] == "ops_test.task_ran")
    assert (task_line["request_id"], task_line["marker"]) == ("req-ops-worker", "worker-1")
    assert task_line["customer_email"] == "[redacted email]" and EMAIL not in text
    assert any(line["logger"].startswith("celery.") for line in lines)  # Celery's own lines, as JSON
    assert client.zscore(f"{settings.HEALTH_KEY_PREFIX}:workers", hostname) is None  # a clean stop says goodbye
