"""Webhook delivery from the sandbox, as a real provider delivers: signed at each attempt, retried with
backoff, in parallel, in no guaranteed order, with the faults real providers show.

Provider modules hand an event to `WebhookDispatcher.send(provider, body, sign=...)`; `sign(body)` gives the
headers of one attempt (a new timestamp and signature, with the secret configured at that moment), so a
retried delivery is signed anew, as Stripe, PayPal, PayMongo and Maya do. Static `headers` are sent as given.

Delivery. A small pool of threads (`SANDBOX_WEBHOOK_WORKERS`, 8) POSTs due deliveries to the URL configured
for the provider, so one slow endpoint does not hold the rest back, and events may arrive in any order.

Retries. A delivery whose attempt failed to connect or timed out, or was answered 5xx, 408 or 429, is tried
again after `base * 2**(attempt - 1)` seconds (capped, with a little jitter), until it is answered 2xx
(delivered) or it has had `max_attempts` attempts or is older than `max_age_seconds` (failed). Any other 4xx
is final (failed, not retried): our endpoint refused the request itself (a bad signature or body), and
re-sending the same bytes cannot change that. Stripe and PayPal do retry every non-2xx; a provider's
settings can ask for that with `retry_4xx=True`. The schedule comes from the settings
`SANDBOX_WEBHOOK_RETRY_BASE_SECONDS` (1), `..._RETRY_CAP_SECONDS` (3600), `..._MAX_ATTEMPTS` (25),
`..._MAX_AGE_SECONDS` (3 days, as Stripe), `..._RETRY_JITTER` (0.1), `SANDBOX_WEBHOOK_TIMEOUT_SECONDS` (10);
each may be overridden per provider in `configure` (`retry_base_ms`, `retry_cap_ms`, `max_attempts`,
`max_age_seconds`).

Faults, per provider: the next `drop` events are lost, the next `duplicate` events are sent twice, each is
delayed by `delay_ms`, and with `reorder=N` every N events go out in reverse order (one after the other, so
the reversal is what the endpoint sees).

`stats()` counts events sent and dropped, attempts, retries, deliveries and failures, and what is pending
(waiting for its first attempt or a retry, or in flight); `wait_idle()` waits until nothing is pending.
`delivered` keeps every finished delivery (delivered, failed or dropped), with each attempt.
"""

from __future__ import annotations

import heapq
import itertools
import random
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
from django.conf import settings as django_settings

Signer = Callable[[bytes], dict[str, str]]

DELIVERED, FAILED, DROPPED, PENDING = "delivered", "failed", "dropped", "pending"
STAT_NAMES = ("sent", "dropped", "attempts", "retried", "delivered", "failed")


@dataclass(frozen=True)
class RetryPolicy:
    base_seconds: float = 1.0
    cap_seconds: float = 3600.0
    max_attempts: int = 25
    max_age_seconds: float = 3 * 24 * 3600.0
    jitter: float = 0.1  # each wait is up to this fraction longer, as real providers spread their retries
    timeout_seconds: float = 10.0

    @classmethod
    def from_settings(cls) -> RetryPolicy:
        read = lambda name, default: getattr(django_settings, f"SANDBOX_WEBHOOK_{name}", default)  # noqa: E731
        return cls(
            base_seconds=float(read("RETRY_BASE_SECONDS", cls.base_seconds)),
            cap_seconds=float(read("RETRY_CAP_SECONDS", cls.cap_seconds)),
            max_attempts=int(read("MAX_ATTEMPTS", cls.max_attempts)),
            max_age_seconds=float(read("MAX_AGE_SECONDS", cls.max_age_seconds)),
            jitter=float(read("RETRY_JITTER", cls.jitter)),
            timeout_seconds=float(read("TIMEOUT_SECONDS", cls.timeout_seconds)),
        )

    def wait_after(self, attempt: int) -> float:
        """Seconds before the next attempt, after `attempt` attempts (1, 2, ...) failed."""
        wait = min(self.cap_seconds, self.base_seconds * 2 ** (attempt - 1))
        return wait * (1 + random.uniform(0, self.jitter))


@dataclass
class WebhookSettings:
    url: str = ""
    drop: int = 0
    duplicate: int = 0
    delay_ms: int = 0
    reorder: int = 0
    retry_4xx: bool = False
    retry_base_ms: int | None = None  # None: the dispatcher's policy (from settings)
    retry_cap_ms: int | None = None
    max_attempts: int | None = None
    max_age_seconds: float | None = None

    def policy(self, default: RetryPolicy) -> RetryPolicy:
        return RetryPolicy(
            base_seconds=default.base_seconds if self.retry_base_ms is None else self.retry_base_ms / 1000,
            cap_seconds=default.cap_seconds if self.retry_cap_ms is None else self.retry_cap_ms / 1000,
            max_attempts=default.max_attempts if self.max_attempts is None else self.max_attempts,
            max_age_seconds=default.max_age_seconds if self.max_age_seconds is None else self.max_age_seconds,
            jitter=default.jitter,
            timeout_seconds=default.timeout_seconds,
        )

    def public(self) -> dict[str, Any]:
        return {name: value for name, value in vars(self).items() if value is not None}


@dataclass
class Attempt:
    at: float  # time.time()
    headers: dict[str, str]
    status: int | None  # None: no answer (refused, reset or timed out)
    error: str = ""


@dataclass
class Delivery:
    provider: str
    body: bytes
    headers: dict[str, str]  # as sent on the latest attempt
    status: int | None = None  # the latest answer; None: dropped or not answered
    sign: Signer | None = field(default=None, repr=False)
    outcome: str = PENDING
    attempts: list[Attempt] = field(default_factory=list)
    created: float = field(default_factory=time.monotonic)
    generation: int = 0

    def summary(self) -> dict[str, Any]:
        return {
            "provider": self.provider,
            "outcome": self.outcome,
            "status": self.status,
            "attempts": [{"at": a.at, "status": a.status, "error": a.error} for a in self.attempts],
        }


def _retryable(status: int | None, retry_4xx: bool) -> bool:
    if status is None or status >= 500 or status in (408, 429):
        return True
    return retry_4xx and 400 <= status < 500


class WebhookDispatcher:
    def __init__(self, *, workers: int | None = None, policy: RetryPolicy | None = None) -> None:
        self.workers = workers
        self.policy = policy
        self.settings: dict[str, WebhookSettings] = {}
        self.delivered: list[Delivery] = []
        self._counts: dict[str, Counter[str]] = {}
        self._held: dict[str, list[Delivery]] = {}
        self._due: list[tuple[float, int, list[Delivery]]] = []  # a heap of (due, seq, deliveries in order)
        self._seq = itertools.count()
        self._pending = 0  # deliveries scheduled or in flight
        self._in_flight = 0
        self._generation = 0
        self._stopping = False
        self._lock = threading.Condition(threading.RLock())
        self._threads: list[threading.Thread] = []

    # --- settings
    def configure(self, provider: str, **options: Any) -> None:
        with self._lock:
            self.settings[provider] = WebhookSettings(**options)

    def reset(self, timeout: float = 10.0) -> None:
        """Forget settings, deliveries, counts and everything not yet attempted; attempts in flight finish."""
        with self._lock:
            self._generation += 1
            for _, _, batch in self._due:
                self._pending -= len(batch)
            self._due.clear()
            self._held.clear()
            self._lock.notify_all()
        self.wait_idle(timeout)
        with self._lock:
            self.settings.clear()
            self.delivered.clear()
            self._counts.clear()

    # --- sending
    def send(
        self, provider: str, body: bytes, headers: dict[str, str] | None = None, *, sign: Signer | None = None
    ) -> None:
        """Deliver `body` to the provider's URL; `sign(body)` gives each attempt's headers (else `headers`)."""
        with self._lock:
            config = self.settings.get(provider)
            if config is None or not config.url:
                return  # nobody listens
            count = self._count(provider)
            new = lambda: Delivery(provider, body, dict(headers or {}), sign=sign, generation=self._generation)  # noqa: E731
            if config.drop > 0:
                config.drop -= 1
                dropped = new()
                dropped.outcome = DROPPED
                self.delivered.append(dropped)
                count.update(("sent", "dropped"))
                return
            copies = 2 if config.duplicate > 0 else 1
            config.duplicate = max(0, config.duplicate - 1)
            count["sent"] += copies
            due = time.monotonic() + config.delay_ms / 1000
            if config.reorder:
                held = self._held.setdefault(provider, [])
                held.extend(new() for _ in range(copies))
                self._pending += copies
                if len(held) >= config.reorder:
                    self._schedule(due, list(reversed(held)))
                    self._held[provider] = []
                return
            self._pending += copies
            for _ in range(copies):
                self._schedule(due, [new()])

    def _schedule(self, due: float, batch: list[Delivery]) -> None:
        heapq.heappush(self._due, (due, next(self._seq), batch))
        self._lock.notify_all()  # workers and wait_idle share the condition: wake every worker to look

    def _count(self, provider: str) -> Counter[str]:
        return self._counts.setdefault(provider, Counter())

    # --- running
    def start(self) -> None:
        if self.policy is None:
            self.policy = RetryPolicy.from_settings()
        if self.workers is None:
            self.workers = int(getattr(django_settings, "SANDBOX_WEBHOOK_WORKERS", 8))
        self._stopping = False
        self._threads = [
            threading.Thread(target=self._run, name=f"sandbox-webhooks-{n}", daemon=True) for n in range(self.workers)
        ]
        for thread in self._threads:
            thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the workers; attempts in flight finish (up to `timeout`), scheduled ones are abandoned."""
        with self._lock:
            self._stopping = True
            self._lock.notify_all()
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))

    def wait_idle(self, timeout: float = 10.0) -> bool:
        """Block until nothing is pending (for tests and the demo); False if still busy after `timeout`."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while self._pending > 0:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._lock.wait(min(left, 0.1))
            return True

    def stats(self) -> dict[str, Any]:
        with self._lock:
            providers = {name: {stat: counts[stat] for stat in STAT_NAMES} for name, counts in self._counts.items()}
            totals = {stat: sum(counts[stat] for counts in self._counts.values()) for stat in STAT_NAMES}
            waiting = sum(len(batch) for _, _, batch in self._due) + sum(len(held) for held in self._held.values())
            return {
                **totals,
                "pending": self._pending,
                "in_flight": self._in_flight,
                "waiting": waiting,
                "idle": self._pending == 0,
                "workers": self.workers,
                "providers": providers,
                "settings": {name: config.public() for name, config in self.settings.items()},
            }

    def _next_batch(self) -> list[Delivery] | None:
        with self._lock:
            while not self._stopping:
                now = time.monotonic()
                if self._due and self._due[0][0] <= now:
                    batch = heapq.heappop(self._due)[2]
                    self._in_flight += len(batch)
                    return batch
                self._lock.wait(self._due[0][0] - now if self._due else None)
            return None

    def _run(self) -> None:
        with httpx.Client(timeout=(self.policy or RetryPolicy()).timeout_seconds) as client:
            while (batch := self._next_batch()) is not None:
                for delivery in batch:
                    try:
                        self._attempt(client, delivery)
                    finally:
                        with self._lock:
                            self._in_flight -= 1
                            self._lock.notify_all()

    def _attempt(self, client: httpx.Client, delivery: Delivery) -> None:
        with self._lock:
            config = self.settings.get(delivery.provider)
            if config is None or not config.url or delivery.generation != self._generation:
                self._pending -= 1  # reset while waiting: nobody listens any more
                return
            url, policy, retry_4xx = config.url, config.policy(self.policy or RetryPolicy()), config.retry_4xx
        headers = delivery.sign(delivery.body) if delivery.sign is not None else delivery.headers
        attempt = Attempt(at=time.time(), headers=headers, status=None)
        try:
            attempt.status = client.post(url, content=delivery.body, headers=headers).status_code
        except httpx.HTTPError as error:
            attempt.error = f"{type(error).__name__}: {error}"
        with self._lock:
            self._finish(delivery, attempt, policy, retry_4xx)

    def _finish(self, delivery: Delivery, attempt: Attempt, policy: RetryPolicy, retry_4xx: bool) -> None:
        delivery.attempts.append(attempt)
        delivery.headers, delivery.status = attempt.headers, attempt.status
        count = self._count(delivery.provider)
        count["attempts"] += 1
        if delivery.generation != self._generation:
            self._pending -= 1  # reset during the attempt: forgotten
            return
        status = attempt.status
        if status is not None and 200 <= status < 300:
            delivery.outcome = DELIVERED
        elif _retryable(status, retry_4xx) and (wait := self._retry_wait(delivery, policy)) is not None:
            count["retried"] += 1
            self._schedule(time.monotonic() + wait, [delivery])
            return
        else:
            delivery.outcome = FAILED
        count[delivery.outcome] += 1
        self.delivered.append(delivery)
        self._pending -= 1

    def _retry_wait(self, delivery: Delivery, policy: RetryPolicy) -> float | None:
        """Seconds until the next attempt, or None when the delivery has had its attempts or its time."""
        wait = policy.wait_after(len(delivery.attempts))
        too_old = time.monotonic() + wait - delivery.created > policy.max_age_seconds
        return None if len(delivery.attempts) >= policy.max_attempts or too_old else wait
