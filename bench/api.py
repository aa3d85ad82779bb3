"""Payment initiation through the API under load: 50 concurrent client apps (each its own user and token) POST
card payments with an Idempotency-Key at gunicorn over loopback (the real stack of ops.stack, the provider
sandbox behind it); a fifth of the requests replay a key the client used before, with the same body. Prints
payments per second and the p95 latency, then checks one payment per key and that every replay answered
with the first answer's payment.

    make bench-api      (BENCH_API_REQUESTS per client, default 6; DATABASE_URL names the PostgreSQL server)

Last line: `api clients=50 payments_per_s=N p95_ms=N one_per_key=true|false`.
"""

from __future__ import annotations

import os
import random
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# Keep bench/ off sys.path: bench/ledger.py would shadow the `ledger` app.
sys.path[:] = [str(ROOT)] + [p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"]

import httpx  # noqa: E402

from bench.webhooks import bench_stack, percentile  # noqa: E402

CLIENTS = 50
REQUESTS = int(os.environ.get("BENCH_API_REQUESTS", "6"))
REPLAYS = 0.2
SECONDS_LIMIT = 300.0


@dataclass
class ClientRun:
    token: str
    user_pk: int
    answers: dict[str, set[str]] = field(default_factory=dict)  # key -> payment references answered
    latencies: list[float] = field(default_factory=list)
    failures: int = 0


def clients() -> list[ClientRun]:
    from django.contrib.auth import get_user_model

    from core.tokens import api_token_issue

    runs = []
    for n in range(CLIENTS):
        user = get_user_model().objects.create_user(f"bench-client-{n}-{uuid.uuid4().hex[:6]}")
        runs.append(ClientRun(api_token_issue(user=user, name="bench", expires_at=None, actor=None).key, user.pk))
    return runs


def run_client(base_url: str, run: ClientRun, deadline: float) -> None:
    rng = random.Random(run.user_pk)
    headers = {"Authorization": f"Token {run.token}"}
    with httpx.Client(base_url=base_url, headers=headers, timeout=60) as client:
        for _ in range(REQUESTS):
            if time.monotonic() > deadline:
                return
            replay = run.answers and rng.random() < REPLAYS
            key = rng.choice(sorted(run.answers)) if replay else uuid.uuid4().hex
            body = {"amount_minor": 1_000 + int(key[:4], 16) % 5_000, "currency": "USD", "provider": "stripe",
                    "method": "card", "payment_method_token": "pm_card_visa"}  # fmt: skip
            began = time.perf_counter()
            answer = client.post("/api/v1/payments/", json=body, headers={"Idempotency-Key": key})
            run.latencies.append(time.perf_counter() - began)
            if answer.status_code in (200, 201):
                run.answers.setdefault(key, set()).add(answer.json()["reference"])
            else:
                run.failures += 1
                run.answers.setdefault(key, set())


def one_per_key(runs: list[ClientRun]) -> bool:
    from providers.models import Payment

    for run in runs:
        stored: dict[str, list[str]] = {}
        for key, reference in Payment.objects.filter(user_id=run.user_pk).values_list("client_key", "reference"):
            stored.setdefault(key, []).append(reference)
        for key, answered in run.answers.items():
            if len(stored.get(key, [])) != 1 or not answered <= set(stored[key]):
                return False
        if set(stored) - set(run.answers):
            return False
    return True


def main() -> int:
    with bench_stack() as stack:
        runs = clients()
        deadline = time.monotonic() + SECONDS_LIMIT
        began = time.perf_counter()
        with ThreadPoolExecutor(max_workers=CLIENTS) as pool:
            list(pool.map(lambda run: run_client(stack.web_url, run, deadline), runs))
        seconds = time.perf_counter() - began
        once = one_per_key(runs)
        created = sum(1 for run in runs for answered in run.answers.values() if answered)
    latencies = [value for run in runs for value in run.latencies]
    failures = sum(run.failures for run in runs)
    print(f"{len(latencies)} requests ({failures} not 2xx) from {CLIENTS} clients in {seconds:.1f} s; {created} keys")
    rate, p95 = created / seconds if seconds else 0.0, percentile(latencies, 0.95) * 1000
    print(f"api clients={CLIENTS} payments_per_s={rate:.0f} p95_ms={p95:.0f} one_per_key={str(once).lower()}")
    return 0 if once else 1


if __name__ == "__main__":
    sys.exit(main())
