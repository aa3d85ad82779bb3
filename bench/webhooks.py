"""Webhook intake under load: signed Stripe events POSTed over loopback at gunicorn (the real stack of
ops.stack: sandbox, gunicorn, two Celery workers, beat) by 16 concurrent senders, with 10% of them sent again
(duplicates) and every batch shuffled (reordered). Prints events per second accepted and the p99 latency, then
waits (bounded) for the workers to process every event and checks each was stored and applied exactly once.

    make bench-webhooks      (BENCH_WEBHOOK_EVENTS, default 2000; DATABASE_URL names the PostgreSQL server)

Last line: `webhooks events=N accepted_per_s=N p99_ms=N applied_once=true|false`. The stack runs on its own
database (backoffice_chaos_bench, dropped and made again) and Redis db 13; its logs in var/bench-stack/.
"""

from __future__ import annotations

import hashlib
import hmac
import http.client
import json
import os
import random
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import SplitResult, urlsplit

ROOT = Path(__file__).resolve().parents[1]
# Keep bench/ off sys.path: bench/ledger.py would shadow the `ledger` app.
sys.path[:] = [str(ROOT)] + [p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"]

from ops.stack import Stack, database_create  # noqa: E402

EVENTS = int(os.environ.get("BENCH_WEBHOOK_EVENTS", "2000"))
SENDERS = 16
DUPLICATES = 0.10
SECONDS_LIMIT = 300.0  # sending and processing, each
REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/13")
SECRET = "whsec_bench"  # noqa: S105 - the benchmark stack's own webhook secret


@contextmanager
def bench_stack(env: dict[str, str] | None = None) -> Iterator[Stack]:
    """The real stack on a fresh database of its own; the benchmark process's Django points at it too."""
    import redis

    server = urlsplit(os.environ.get("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/postgres"))
    database_url = server._replace(path="/backoffice_chaos_bench").geturl()
    database_create(database_url, drop=True)
    redis.Redis.from_url(REDIS_URL).flushdb()
    os.environ.update(DATABASE_URL=database_url, REDIS_URL=REDIS_URL, STRIPE_WEBHOOK_SECRET=SECRET)
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    stack_env = {"STRIPE_WEBHOOK_SECRET": SECRET, **(env or {})}
    with Stack(database_url, REDIS_URL, workers=2, env=stack_env, log_dir=ROOT / "var" / "bench-stack") as stack:
        import django

        django.setup()
        yield stack


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))] if ordered else 0.0


def signed(event_id: str) -> tuple[bytes, dict[str, str]]:
    """One Stripe event (a connected account update for an account we do not know: stored, then ignored)."""
    body = json.dumps({
        "id": event_id, "object": "event", "type": "account.updated", "created": int(time.time()),
        "data": {"object": {"id": f"acct_bench{event_id[-12:]}", "object": "account"}},
    }).encode()  # fmt: skip
    timestamp = int(time.time())
    digest = hmac.new(SECRET.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return body, {"Content-Type": "application/json", "Stripe-Signature": f"t={timestamp},v1={digest}"}


def deliveries(ids: list[str]) -> list[str]:
    """Every event once, 10% of them again, in shuffled batches of 100 (reordered within each)."""
    sends = ids + random.sample(ids, int(len(ids) * DUPLICATES))
    random.shuffle(sends)
    return sends


def send_all(url: str, sends: list[str]) -> tuple[list[float], int, float]:
    """SENDERS threads, each over its own HTTP/1.1 keep-alive connection (http.client: a small part of the CPU
    httpx takes per request, which matters when the senders share the two cores with the stack)."""
    latencies: list[float] = []
    deadline = time.monotonic() + SECONDS_LIMIT
    target, connections = urlsplit(url), threading.local()

    def send(event_id: str) -> bool:
        if time.monotonic() > deadline:
            return False
        body, headers = signed(event_id)
        began = time.perf_counter()
        status = _post(connections, target, body, headers)
        latencies.append(time.perf_counter() - began)
        return status < 300

    began = time.perf_counter()
    with ThreadPoolExecutor(max_workers=SENDERS) as pool:
        accepted = sum(pool.map(send, sends))
    return latencies, accepted, time.perf_counter() - began


def _post(connections: threading.local, target: SplitResult, body: bytes, headers: dict[str, str]) -> int:
    """POST over this thread's connection, opened again once if the server closed it meanwhile."""
    for attempt in (1, 2):
        if getattr(connections, "http", None) is None:
            connections.http = http.client.HTTPConnection(target.hostname, target.port, timeout=30)
        try:
            connections.http.request("POST", target.path, body=body, headers=headers)
            answer = connections.http.getresponse()
            answer.read()
            return answer.status
        except (ConnectionError, http.client.HTTPException):
            connections.http.close()
            connections.http = None
            if attempt == 2:
                raise
    raise AssertionError("unreachable")


def applied_once(ids: list[str]) -> bool:
    """Each event stored once (valid), processed to an end once; waits for the workers, bounded."""
    from providers.models import WebhookEvent

    final = [WebhookEvent.Status.PROCESSED, WebhookEvent.Status.IGNORED]
    events = WebhookEvent.objects.filter(provider="stripe", signature_valid=True, event_id__in=ids)
    deadline = time.monotonic() + SECONDS_LIMIT
    while time.monotonic() < deadline and events.filter(status__in=final).count() < len(ids):
        time.sleep(1.0)
    rows = list(events.values_list("event_id", "status", "attempts"))
    once = len(rows) == len(ids) == len({row[0] for row in rows})
    return once and all(status in final and attempts == 1 for _, status, attempts in rows)


def main() -> int:
    ids = [f"evt_bench_{uuid.uuid4().hex}" for _ in range(EVENTS)]
    sends = deliveries(ids)
    with bench_stack() as stack:
        latencies, accepted, seconds = send_all(f"{stack.web_url}/webhooks/stripe/", sends)
        duplicates = len(sends) - len(ids)
        print(f"sent {len(sends)} deliveries ({duplicates} duplicates) in {seconds:.1f} s; {accepted} accepted")
        once = applied_once(ids)
    rate, p99 = accepted / seconds if seconds else 0.0, percentile(latencies, 0.99) * 1000
    print(f"webhooks events={len(ids)} accepted_per_s={rate:.0f} p99_ms={p99:.0f} applied_once={str(once).lower()}")
    return 0 if once else 1


if __name__ == "__main__":
    sys.exit(main())
