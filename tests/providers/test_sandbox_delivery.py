"""The sandbox delivers webhooks as a real provider does: signed anew at each attempt, retried with growing
waits while our endpoint is down or answers 5xx, several at once, until it gives up after its attempts; and
`manage.py sandbox` runs it as its own process."""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from django.conf import settings

from ops.stack import free_port
from providers.sandbox import stripe as stripe_sandbox
from providers.sandbox.server import Sandbox
from providers.sandbox.webhooks import DELIVERED, FAILED, RetryPolicy, WebhookDispatcher
from providers.stripe.client import verify_webhook as verify_stripe_signature

ROOT = Path(__file__).resolve().parents[2]


@dataclass
class Received:
    path: str
    body: bytes
    headers: dict[str, str]
    at: float  # time.monotonic() when the request arrived
    answered_at: float = 0.0


class Endpoint:
    """Our webhook endpoint, scripted: each path answers its statuses in turn (the last one repeats), after
    an optional delay, and every request is recorded."""

    def __init__(self) -> None:
        self.script: dict[str, list[int]] = {}
        self.delay: dict[str, float] = {}
        self.received: list[Received] = []
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                seen = Received(self.path, body, dict(self.headers.items()), time.monotonic())
                with endpoint._lock:
                    endpoint.received.append(seen)
                    statuses = endpoint.script.setdefault(self.path, [200])
                    status = statuses.pop(0) if len(statuses) > 1 else statuses[0]
                time.sleep(endpoint.delay.get(self.path, 0.0))
                seen.answered_at = time.monotonic()
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                return

        return Handler

    def at(self, path: str) -> list[Received]:
        with self._lock:
            return [r for r in self.received if r.path == path]

    def __enter__(self) -> Endpoint:
        threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()


@pytest.fixture
def endpoint() -> Iterator[Endpoint]:
    with Endpoint() as running:
        yield running


def dispatcher(*, base_seconds: float, max_attempts: int = 5, workers: int = 4) -> WebhookDispatcher:
    policy = RetryPolicy(base_seconds=base_seconds, cap_seconds=60, max_attempts=max_attempts, jitter=0.0,
                         timeout_seconds=5)  # fmt: skip
    webhooks = WebhookDispatcher(workers=workers, policy=policy)
    webhooks.start()
    return webhooks


def gaps(times: list[float]) -> list[float]:
    return [later - earlier for earlier, later in itertools.pairwise(times)]


def test_each_attempt_is_signed_anew(endpoint):
    """A retried Stripe event carries a new timestamp and a signature that verifies for it."""
    endpoint.script["/stripe"] = [503, 200]
    sandbox = Sandbox()
    sandbox.webhooks.policy = RetryPolicy(base_seconds=1.0, max_attempts=3, jitter=0.0, timeout_seconds=5)
    sandbox.start()
    try:
        sandbox.webhooks.configure("stripe", url=f"{endpoint.url}/stripe")
        stripe_sandbox.account_set(sandbox, "acct_signedTwice", transfers="active")
        assert sandbox.webhooks.wait_idle(timeout=10)
    finally:
        sandbox.stop()
    first, second = endpoint.at("/stripe")
    assert first.body == second.body
    stamps = [r.headers["Stripe-Signature"].split(",")[0] for r in (first, second)]
    assert stamps[0] != stamps[1]  # waited a second: a new t=
    for attempt in (first, second):
        event = verify_stripe_signature(attempt.body, attempt.headers["Stripe-Signature"])
        assert event["type"] == "account.updated"
    (delivery,) = sandbox.webhooks.delivered
    assert delivery.outcome == DELIVERED and [a.status for a in delivery.attempts] == [503, 200]


def test_an_endpoint_answering_5xx_is_retried_with_growing_waits(endpoint):
    endpoint.script["/hook"] = [500, 502, 503, 200]
    webhooks = dispatcher(base_seconds=0.1)
    try:
        webhooks.configure("test", url=f"{endpoint.url}/hook")
        webhooks.send("test", b"event", {"X-Test": "1"})
        assert webhooks.wait_idle(timeout=10)
    finally:
        webhooks.stop()
    waits = gaps([r.at for r in endpoint.at("/hook")])
    assert len(waits) == 3
    for wait, planned in zip(waits, (0.1, 0.2, 0.4), strict=True):
        assert wait >= planned * 0.95
    assert waits[0] < waits[1] < waits[2]
    stats = webhooks.stats()
    assert (stats["attempts"], stats["retried"], stats["delivered"], stats["failed"]) == (4, 3, 1, 0)


def test_an_endpoint_that_is_down_is_retried_then_given_up_after_max_attempts():
    down = f"http://127.0.0.1:{free_port()}/hook"  # nobody listens: connection refused
    webhooks = dispatcher(base_seconds=0.1, max_attempts=4)
    try:
        webhooks.configure("test", url=down)
        webhooks.send("test", b"event")
        assert webhooks.wait_idle(timeout=10)
    finally:
        webhooks.stop()
    (delivery,) = webhooks.delivered
    assert delivery.outcome == FAILED
    assert [a.status for a in delivery.attempts] == [None] * 4
    assert all("ConnectError" in a.error for a in delivery.attempts)
    waits = gaps([a.at for a in delivery.attempts])
    assert waits[0] >= 0.095 and waits[0] < waits[1] < waits[2]
    assert webhooks.stats()["failed"] == 1


def test_a_5xx_endpoint_gets_exactly_max_attempts_then_nothing_more(endpoint):
    endpoint.script["/hook"] = [503]
    webhooks = dispatcher(base_seconds=0.05, max_attempts=3)
    try:
        webhooks.configure("test", url=f"{endpoint.url}/hook")
        webhooks.send("test", b"event")
        assert webhooks.wait_idle(timeout=10)
        time.sleep(0.5)  # well past the next wait (0.2 s): a fourth attempt would have come
    finally:
        webhooks.stop()
    assert len(endpoint.at("/hook")) == 3
    assert [d.outcome for d in webhooks.delivered] == [FAILED]
    assert webhooks.stats()["retried"] == 2


def test_a_4xx_is_final(endpoint):
    endpoint.script["/hook"] = [400, 200]
    webhooks = dispatcher(base_seconds=0.05)
    try:
        webhooks.configure("test", url=f"{endpoint.url}/hook")
        webhooks.send("test", b"event")
        assert webhooks.wait_idle(timeout=10)
    finally:
        webhooks.stop()
    assert len(endpoint.at("/hook")) == 1
    assert webhooks.delivered[0].outcome == FAILED


def test_a_slow_endpoint_does_not_hold_back_the_others(endpoint):
    endpoint.delay["/slow"] = 2.0
    webhooks = dispatcher(base_seconds=1.0, workers=4)
    try:
        webhooks.configure("slow", url=f"{endpoint.url}/slow")
        webhooks.configure("fast", url=f"{endpoint.url}/fast")
        webhooks.send("slow", b"slow-event")
        time.sleep(0.1)  # the slow delivery is in flight first
        for n in range(3):
            webhooks.send("fast", f"fast-{n}".encode())
        assert webhooks.wait_idle(timeout=10)
    finally:
        webhooks.stop()
    (slow,) = endpoint.at("/slow")
    fast = endpoint.at("/fast")
    assert sorted(r.body for r in fast) == [b"fast-0", b"fast-1", b"fast-2"]
    assert max(r.answered_at for r in fast) < slow.answered_at
    assert webhooks.stats()["delivered"] == 4


def _wait_until_up(url: str, process: subprocess.Popen[bytes], seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert process.poll() is None, "manage.py sandbox exited while starting"
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    pytest.fail(f"manage.py sandbox did not answer {url} within {seconds} s")


@pytest.mark.slow
def test_manage_py_sandbox_runs_standalone_and_delivers(endpoint, tmp_path):
    endpoint.script["/stripe"] = [400, 503, 200]  # Stripe delivers again after any answer but 2xx
    port = free_port()
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "config.settings", "SANDBOX_URL": f"http://127.0.0.1:{port}",
           "STRIPE_WEBHOOK_SECRET": settings.STRIPE_WEBHOOK_SECRET}  # fmt: skip
    command = [sys.executable, "manage.py", "sandbox", "--port", str(port), "--webhook-base-url", "",
               "--webhook-url", f"stripe={endpoint.url}/stripe", "--retry-base-seconds", "0.2"]  # fmt: skip
    output = tmp_path / "sandbox.log"
    with open(output, "wb") as log:
        process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)  # noqa: S603
    try:
        base = f"http://127.0.0.1:{port}"
        _wait_until_up(f"{base}/_control/health", process, seconds=60)
        assert httpx.get(f"{base}/_control/health").json()["status"] == "ok"
        response = httpx.post(f"{base}/stripe/_simulate/accounts/acct_standalone", json={"transfers": "active"})
        assert response.status_code == 200
        waited = httpx.post(f"{base}/_control/webhooks/wait", json={"timeout": 20}, timeout=30)
        assert waited.status_code == 200
        counts = waited.json()
        assert (counts["sent"], counts["delivered"], counts["retried"], counts["pending"]) == (1, 1, 2, 0)
        (delivery,) = httpx.get(f"{base}/_control/webhooks/deliveries", params={"provider": "stripe"}).json()[
            "deliveries"
        ]
        assert [a["status"] for a in delivery["attempts"]] == [400, 503, 200]
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=10)
    attempts = endpoint.at("/stripe")
    assert len(attempts) == 3
    assert verify_stripe_signature(attempts[2].body, attempts[2].headers["Stripe-Signature"])["id"].startswith("evt_")
    assert "Sandbox stopped; webhook deliveries: sent 1, delivered 1, retried 2, failed 0" in output.read_text()
