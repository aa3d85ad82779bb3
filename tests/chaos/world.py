"""The real-process chaos tests' world: a stack (ops.stack) on a database of its own, the test process pointed
at the same database and sandbox, and the few moves every scenario makes:

- `api(...)`: a client app's token and HTTP calls to gunicorn;
- `tasks.send(name, ...)`: a Celery task delivered to the stack's workers (as beat or a nudge would);
- `pause_at(step, operation)` then `wait_paused()`: the protocol pause hook (providers/protocol/pause.py)
  stops one process at that step, so the test can SIGKILL it there;
- `settle(stack)`: time moved (harness.make_due) and the beat jobs sent to the workers until nothing is open;
- `sandbox_*`: the sandbox's control API (faults, call counts, webhook settings).
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
from django.db import connections
from django.utils import timezone

from ops.stack import Stack, database_create
from providers.breaker import breaker_for
from providers.models import MoneyMovement
from tests.protocol.harness import make_due, webhooks_due

ROOT = Path(__file__).resolve().parents[2]
POSTGRES = "postgres://postgres@127.0.0.1:5432"
PAUSE_FILE = ROOT / "var" / "chaos" / "pause"
# the beat jobs that follow work up; sent to the workers by `settle` instead of waiting for beat's minute
SWEEP_TASKS = (
    "providers.sweep_webhook_events",
    "escrow.apply_deal_timeouts",
    "escrow.time_out_purchases",
    "providers.sweep_money_movements",
)
STACK_ENV = {
    "PROTOCOL_CLAIM_SECONDS": "3",  # a dead worker's claim lapses quickly
    "PROTOCOL_PAUSE_FILE": str(PAUSE_FILE),
    "PROTOCOL_PAUSE_SECONDS": "60",
    "PROVIDER_TIMEOUT_SECONDS": "1.5",
    "PROVIDER_RETRY_ATTEMPTS": "1",  # each injected fault hits the call it names
    "PROVIDER_BREAKER_BASE_BACKOFF_SECONDS": "1",
    "PROVIDER_BREAKER_MAX_BACKOFF_SECONDS": "2",
    "PROVIDER_STATE_KEY_PREFIX": "chaos",
    "CELERY_VISIBILITY_TIMEOUT_SECONDS": "10",  # a task whose worker died is delivered again
    "IDEMPOTENCY_IN_FLIGHT_TIMEOUT_SECONDS": "3",  # a request whose web worker died may be replayed
    "SANDBOX_WEBHOOK_RETRY_BASE_SECONDS": "0.5",
    "SANDBOX_WEBHOOK_RETRY_CAP_SECONDS": "2",
    "SANDBOX_WEBHOOK_MAX_ATTEMPTS": "6",
}


def stack_for(name: str, redis_url: str, **env: str) -> Stack:
    """A stack on a fresh database `backoffice_chaos_<name>`; its logs in var/chaos/<name>/."""
    database_url = f"{POSTGRES}/backoffice_chaos_{name}"
    database_create(database_url, drop=True)
    return Stack(database_url, redis_url, workers=2, env={**STACK_ENV, **env}, log_dir=ROOT / "var" / "chaos" / name)


@contextmanager
def on_stack_database(stack: Stack, settings: Any, django_db_blocker: Any) -> Iterator[None]:
    """The test process reads and writes the stack's database and calls its sandbox while inside."""
    connection = connections["default"]
    test_name = connection.settings_dict["NAME"]
    connection.close()
    connection.settings_dict["NAME"] = stack.database_url.rsplit("/", 1)[1]
    settings.SANDBOX_URL = stack.sandbox_url
    settings.PROVIDER_MODE = "sandbox"
    settings.REDIS_URL = stack.redis_url  # the circuit breakers the stack's processes share
    settings.PROVIDER_STATE_KEY_PREFIX = stack.env["PROVIDER_STATE_KEY_PREFIX"]
    try:
        with django_db_blocker.unblock():
            yield
    finally:
        connection.close()
        connection.settings_dict["NAME"] = test_name


# --- Celery, the sandbox, the API ------------------------------------------------------------------------------


class Tasks:
    def __init__(self, redis_url: str) -> None:
        from celery import Celery

        self.app = Celery("chaos", broker=redis_url)

    def send(self, name: str, *args: Any) -> None:
        self.app.send_task(name, args=list(args))

    def close(self) -> None:
        self.app.close()


def sandbox_call(stack: Stack, method: str, path: str, body: Any = None) -> Any:
    answer = httpx.request(method, f"{stack.sandbox_url}{path}", json=body, timeout=30)
    assert answer.status_code < 300, f"{method} {path}: {answer.status_code} {answer.text}"
    return answer.json()


def sandbox_fault(stack: Stack, operation: str, kind: str, times: int | None = 1, **extra: Any) -> None:
    sandbox_call(stack, "POST", "/_control/faults", {"operation": operation, "kind": kind, "times": times, **extra})


def sandbox_clear(stack: Stack) -> None:
    sandbox_call(stack, "DELETE", "/_control/faults")


def sandbox_calls(stack: Stack) -> dict[str, int]:
    return sandbox_call(stack, "GET", "/_control/calls")


def stripe_webhooks(stack: Stack, **faults: int) -> None:
    """Stripe's webhooks to our endpoint, with the dispatcher's faults (drop, duplicate, delay_ms, reorder)."""
    sandbox_call(stack, "POST", "/_control/webhooks", {"provider": "stripe", "url": f"{stack.web_url}/webhooks/stripe/",
                                                       **faults})  # fmt: skip


@dataclass
class Api:
    """A client app of the API, as one user with a token."""

    base_url: str
    key: str
    user: Any

    def post(self, path: str, body: dict[str, Any], idempotency_key: str, timeout: float = 30) -> httpx.Response:
        headers = {"Authorization": f"Token {self.key}", "Idempotency-Key": idempotency_key}
        return httpx.post(f"{self.base_url}{path}", json=body, headers=headers, timeout=timeout)

    def pay(self, amount_minor: int, key: str | None = None, **choice: str) -> httpx.Response:
        body = {"amount_minor": amount_minor, "currency": "USD", "payment_method_token": "pm_card_visa"}
        body |= choice or {"provider": "stripe", "method": "card"}
        return self.post("/api/v1/payments/", body, key or uuid.uuid4().hex)


def api_client(stack: Stack) -> Api:
    from django.contrib.auth import get_user_model

    from core.tokens import api_token_issue

    user = get_user_model().objects.create_user(f"client-{uuid.uuid4().hex[:8]}")
    issued = api_token_issue(user=user, name="chaos", expires_at=None, actor=None)
    return Api(stack.web_url, issued.key, user)


# --- pausing a process at a protocol step -------------------------------------------------------------------


def pause_at(step: str, operation: str) -> None:
    PAUSE_FILE.parent.mkdir(parents=True, exist_ok=True)
    Path(f"{PAUSE_FILE}.paused").unlink(missing_ok=True)
    PAUSE_FILE.write_text(f"{step} {operation}\n")


def pause_disarm() -> None:
    PAUSE_FILE.unlink(missing_ok=True)
    Path(f"{PAUSE_FILE}.paused").unlink(missing_ok=True)


def wait_paused(seconds: float = 45.0) -> tuple[int, str]:
    """The pid of the process paused at the armed step, and the movement's key."""
    paused = Path(f"{PAUSE_FILE}.paused")
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        text = paused.read_text() if paused.exists() else ""
        if text.endswith("\n"):
            pid, _step, key = text.split()
            return int(pid), key
        time.sleep(0.1)
    raise AssertionError(f"no process paused at {PAUSE_FILE.read_text() if PAUSE_FILE.exists() else '?'}")


def owner_of(stack: Stack, pid: int) -> str:
    """Which of the stack's processes `pid` belongs to (each runs in its own process group)."""
    group = os.getpgid(pid)
    for name, process in stack.processes.items():
        if process.pid == group:
            return name
    raise LookupError(f"pid {pid} is not one of the stack's processes")


# --- time passes --------------------------------------------------------------------------------------------


def open_movements() -> int:
    return MoneyMovement.objects.filter(status__in=MoneyMovement.OPEN, next_sync_at__isnull=False).count()


def settle(
    stack: Stack, tasks: Tasks, *, done: Callable[[], bool] = lambda: True, seconds: float = 60.0, rounds: int = 2
) -> int:
    """Move time and send the beat jobs to the workers until nothing is open (and `done()`), at least `rounds`
    times; returns how many rounds it took. Fails if it does not get there in `seconds`."""
    deadline, taken = time.monotonic() + seconds, 0
    while time.monotonic() < deadline:
        httpx.post(f"{stack.sandbox_url}/_control/webhooks/wait", json={"timeout": 3}, timeout=30)  # 504: still busy
        webhooks_due()
        time_passes()
        make_due()
        for name in SWEEP_TASKS:
            tasks.send(name)
        taken += 1
        time.sleep(1.5)
        if taken >= rounds and not open_movements() and done():
            return taken
    raise AssertionError(f"still {open_movements()} open movements after {seconds:.0f} s of sweeping")


def an_hour_passed() -> None:
    """Open movements were first sent over an hour ago: Stripe Search has caught up with them (SEARCH_FRESHNESS),
    so a look-up that finds nothing is authoritative, as on the sweeper's second look; still inside every key
    window."""
    hour_ago = timezone.now() - timedelta(minutes=61)
    MoneyMovement.objects.filter(status__in=MoneyMovement.OPEN, first_sent_at__gt=hour_ago).update(
        first_sent_at=hour_ago
    )


def time_passes() -> None:
    """What the sweeper's schedule waits for, at once: an hour since the first send, every breaker's backoff."""
    an_hour_passed()
    breakers_reset()


def breakers_reset() -> None:
    """Every provider's circuit closed and its history forgotten (the staff action), between scenarios."""
    for provider in ("stripe", "paypal", "gcash", "maya"):
        breaker_for(provider).reset()


def succeeded() -> int:
    return MoneyMovement.objects.filter(status=MoneyMovement.Status.SUCCEEDED).count()
