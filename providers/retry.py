"""Retrying a provider call, only where repeating it cannot move money twice.

The contract: `call` takes no arguments and re-sends the SAME request with the SAME
idempotency key every time (DESIGN 5: the key comes from our row, never new on retry).
Only the caller knows whether the provider honours that key for this operation, so it
says so with `idempotent`. Without it nothing is retried.

- Retried (when idempotent): `Declined(retryable=True)` and `Unknown`.
- Never retried: `Succeeded`, `Pending`, a `Declined` that is not retryable.
- Waits between attempts: exponential backoff with full jitter, each at most `max_delay`.
- With a breaker: no call while it refuses; the first refusal gives
  `Declined(code="circuit_open", retryable=True)` without calling. Every call made is
  recorded on the breaker.
- Once an attempt was `Unknown`, only `Succeeded` or `Pending` settles it. A later
  decline cannot show the money did not move: a retryable one (not sent, circuit open)
  says nothing about the first attempt, and a final one may be the provider refusing
  the repeated key (PayPal rejects a reused sender_batch_id). The result stays
  `Unknown` for the sync job, and a caller never falls back to another provider.
- Exceptions from `call` are bugs and propagate; a half-open trial slot taken for that
  call is then reclaimed by the breaker's trial timeout.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable

from django.conf import settings

from monitoring.metrics import provider_call_observed
from providers import availability
from providers.base import Declined, ProviderResult, Unknown
from providers.breaker import CircuitBreaker, breaker_for
from providers.health import circuit_changed

ProviderCall = Callable[[], ProviderResult]
AttemptObserver = Callable[[ProviderResult, float], None]  # result, latency in ms


def backoff_delay(retry: int, *, base_delay: float, max_delay: float, rng: Callable[[], float]) -> float:
    """Full jitter: uniform in [0, min(max_delay, base_delay * 2**(retry - 1))) for retry 1, 2, ..."""
    return rng() * min(max_delay, base_delay * 2.0 ** min(retry - 1, 64))


def should_retry(result: ProviderResult, *, idempotent: bool) -> bool:
    if not idempotent:
        return False
    if isinstance(result, Unknown):
        return not result.answered  # an answer that cannot settle it yet gives the same answer again now
    return isinstance(result, Declined) and result.retryable


def circuit_open(breaker: CircuitBreaker) -> Declined:
    return Declined(reason=f"circuit open for {breaker.name}; not sent", code="circuit_open", retryable=True)


def settle(previous: ProviderResult | None, latest: ProviderResult) -> ProviderResult:
    """The outcome so far: a decline after an Unknown does not make it known."""
    if isinstance(previous, Unknown) and isinstance(latest, Declined):
        return previous
    return latest


def call_with_retries(
    call: ProviderCall,
    *,
    attempts: int,
    base_delay: float,
    max_delay: float,
    idempotent: bool = False,
    breaker: CircuitBreaker | None = None,
    on_attempt: AttemptObserver | None = None,
    sleep: Callable[[float], None] = time.sleep,
    rng: Callable[[], float] = random.random,
    clock: Callable[[], float] = time.monotonic,
) -> ProviderResult:
    """Call, and call again (at most `attempts` times in all) while it is safe and useful."""
    if attempts < 1:
        raise ValueError("attempts must be at least 1")
    outcome: ProviderResult | None = None
    for attempt in range(attempts):
        if attempt:
            sleep(backoff_delay(attempt, base_delay=base_delay, max_delay=max_delay, rng=rng))
        if breaker is not None and not breaker.allow():
            return settle(outcome, circuit_open(breaker))
        result = _attempt(call, breaker, on_attempt, clock)
        outcome = settle(outcome, result)
        if not should_retry(result, idempotent=idempotent):
            break
    assert outcome is not None  # attempts >= 1 and every path above sets it or returns
    return outcome


def _attempt(
    call: ProviderCall, breaker: CircuitBreaker | None, on_attempt: AttemptObserver | None, clock: Callable[[], float]
) -> ProviderResult:
    started = clock()
    result = call()
    latency_ms = (clock() - started) * 1000.0
    if breaker is not None:
        breaker.record(result)
    if on_attempt is not None:
        on_attempt(result, latency_ms)
    return result


def call_provider(
    provider: str,
    method: str,
    call: ProviderCall,
    *,
    idempotent: bool,
    attempts: int | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> ProviderResult:
    """`call_with_retries` wired to the provider's breaker and availability figures."""
    tracker = availability.tracker()

    def observe(result: ProviderResult, latency_ms: float) -> None:
        tracker.record_call(provider, method, result, latency_ms)
        provider_call_observed(provider, method, result, latency_ms)

    return call_with_retries(
        call,
        attempts=attempts if attempts is not None else int(getattr(settings, "PROVIDER_RETRY_ATTEMPTS", 3)),
        base_delay=float(getattr(settings, "PROVIDER_RETRY_BASE_DELAY_SECONDS", 0.5)),
        max_delay=float(getattr(settings, "PROVIDER_RETRY_MAX_DELAY_SECONDS", 5.0)),
        idempotent=idempotent,
        breaker=breaker_for(provider, on_change=circuit_changed),
        on_attempt=observe,
        sleep=sleep,
    )
