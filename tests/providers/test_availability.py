"""Availability figures over a sliding window on real Redis (and in-process), time injected."""

import multiprocessing
import os
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime

import pytest
import redis

from providers import availability as availability_module
from providers.availability import (
    Availability,
    AvailabilityTracker,
    LocalAvailabilityTracker,
    RedisAvailabilityTracker,
    all_availability,
    availability,
    record_call,
)
from providers.base import Declined, Pending, Succeeded, Unknown

T0 = 1_700_000_000.0
OK = Succeeded(reference="po_1")
TIMEOUT = Unknown(reason="ReadTimeout: timed out")


class FakeClock:
    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def at(timestamp: float) -> datetime:
    return datetime.fromtimestamp(timestamp, tz=UTC)


@pytest.fixture
def redis_client() -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(os.environ["REDIS_URL"])
    yield client
    client.close()


@pytest.fixture
def prefix(redis_client: redis.Redis) -> Iterator[str]:
    prefix = f"test:availability:{uuid.uuid4().hex}"
    yield prefix
    for key in redis_client.scan_iter(match=f"{prefix}:*"):
        redis_client.delete(key)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


Make = Callable[..., AvailabilityTracker]


@pytest.fixture(params=["redis", "local"])
def make_tracker(request, redis_client: redis.Redis, prefix: str, clock: FakeClock) -> Make:
    def make(window_seconds: int = 300, bucket_seconds: int = 1) -> AvailabilityTracker:
        options = {"prefix": prefix, "window_seconds": window_seconds, "bucket_seconds": bucket_seconds, "clock": clock}
        if request.param == "redis":
            return RedisAvailabilityTracker(client=redis_client, **options)
        return LocalAvailabilityTracker(**options)

    return make


def test_no_calls_means_nothing_to_judge_by(make_tracker: Make):
    figures = make_tracker().availability("paypal", "batch_create")
    assert figures == Availability(
        provider="paypal",
        method="batch_create",
        window_seconds=300,
        calls=0,
        successes=0,
        avg_latency_ms=None,
        last_success_at=None,
        last_failure_at=None,
    )
    assert figures.success_rate is None


def test_success_rate_latency_and_last_success_and_failure(make_tracker: Make, clock: FakeClock):
    tracker = make_tracker()
    for latency_ms in (100, 200, 300):
        tracker.record_call("paypal", "batch_create", OK, latency_ms)
        clock.advance(10)
    tracker.record_call("paypal", "batch_create", TIMEOUT, 1000.5)
    clock.advance(5)

    figures = tracker.availability("paypal", "batch_create")

    assert (figures.calls, figures.successes, figures.failures) == (4, 3, 1)
    assert figures.success_rate == 0.75
    assert figures.avg_latency_ms == pytest.approx(400.125)
    assert (figures.last_success_at, figures.last_failure_at) == (at(T0 + 20), at(T0 + 30))


def test_results_count_as_the_breaker_counts_them(make_tracker: Make):
    tracker = make_tracker()
    tracker.record_call("stripe", "payment_intents.create", Declined(reason="declined", code="card_declined"), 50)
    tracker.record_call("stripe", "payment_intents.create", Pending(reference="pi_1"), 50)
    tracker.record_call(
        "stripe", "payment_intents.create", Declined(reason="down", code="not_sent", retryable=True), 50
    )
    tracker.record_call("stripe", "payment_intents.create", Declined(reason="open", code="circuit_open"), 0)
    figures = tracker.availability("stripe", "payment_intents.create")
    assert (figures.calls, figures.successes) == (3, 2)  # the circuit_open answer was no call


def test_the_window_slides_and_old_samples_leave_it(make_tracker: Make, clock: FakeClock):
    tracker = make_tracker(window_seconds=300)
    tracker.record_call("maya", "checkout", TIMEOUT, 900)
    tracker.record_call("maya", "checkout", TIMEOUT, 900)
    clock.advance(200)
    tracker.record_call("maya", "checkout", OK, 100)
    tracker.record_call("maya", "checkout", OK, 300)

    clock.advance(99)  # T0 + 299: all four are within the last 5 minutes
    assert tracker.availability("maya", "checkout").success_rate == 0.5

    clock.advance(2)  # T0 + 301: the two failures are older than the window
    figures = tracker.availability("maya", "checkout")
    assert (figures.calls, figures.success_rate, figures.avg_latency_ms) == (2, 1.0, 200.0)
    assert figures.last_failure_at == at(T0)  # kept beyond the window

    clock.advance(300)
    assert tracker.availability("maya", "checkout").calls == 0


def test_the_window_is_exact_to_one_bucket(make_tracker: Make, clock: FakeClock):
    tracker = make_tracker(window_seconds=60, bucket_seconds=10)
    clock.advance(5)  # in the bucket [T0, T0 + 10)
    tracker.record_call("gcash", "payments.create", OK, 10)
    clock.now = T0 + 69.9  # the window (T0 + 9.9, T0 + 69.9] still touches that bucket
    assert tracker.availability("gcash", "payments.create").calls == 1
    clock.now = T0 + 70
    assert tracker.availability("gcash", "payments.create").calls == 0


def test_writing_prunes_buckets_that_left_the_window(make_tracker: Make, clock: FakeClock):
    tracker = make_tracker(window_seconds=300)
    tracker.record_call("paypal", "batch_get", OK, 10)
    clock.advance(100)
    tracker.record_call("paypal", "batch_get", OK, 10)
    assert tracker.bucket_starts("paypal", "batch_get") == [int(T0), int(T0) + 100]

    clock.advance(250)
    tracker.record_call("paypal", "batch_get", TIMEOUT, 10)

    assert tracker.bucket_starts("paypal", "batch_get") == [int(T0) + 100, int(T0) + 350]


def test_redis_keeps_only_the_window_and_expires_idle_series(redis_client: redis.Redis, prefix: str, clock: FakeClock):
    tracker = RedisAvailabilityTracker(
        client=redis_client, prefix=prefix, window_seconds=300, bucket_seconds=1, clock=clock
    )
    for _ in range(3):
        tracker.record_call("paypal", "batch_get", OK, 10)
        clock.advance(400)
    counters = f"{prefix}:avail:paypal:batch_get:counters"
    newest = int(clock.now) - 400
    assert sorted(redis_client.hkeys(counters)) == [f"{newest}:{field}".encode() for field in ("ms", "n", "ok")]
    assert 0 < redis_client.ttl(counters) <= 302
    assert 0 < redis_client.ttl(f"{prefix}:avail:paypal:batch_get:buckets") <= 302


def test_each_provider_and_method_has_its_own_figures_and_all_are_listed(make_tracker: Make):
    tracker = make_tracker()
    tracker.record_call("paypal", "batch_get", OK, 10)
    tracker.record_call("paypal", "batch_create", TIMEOUT, 20)
    tracker.record_call("paymongo", "refunds.create", OK, 30)

    listed = tracker.all_availability()

    assert [(a.provider, a.method, a.calls, a.successes) for a in listed] == [
        ("paymongo", "refunds.create", 1, 1),
        ("paypal", "batch_create", 1, 0),
        ("paypal", "batch_get", 1, 1),
    ]


def _record_in_child(url: str, prefix: str, now: float, calls: int) -> int:
    client = redis.Redis.from_url(url)
    tracker = RedisAvailabilityTracker(
        client=client, prefix=prefix, window_seconds=300, bucket_seconds=1, clock=lambda: now
    )
    for n in range(calls):
        tracker.record_call("paypal", "batch_create", OK if n % 2 else TIMEOUT, 100)
    return os.getpid()


@pytest.mark.slow
def test_processes_add_to_the_same_figures(redis_client: redis.Redis, prefix: str, clock: FakeClock):
    url = os.environ["REDIS_URL"]
    with multiprocessing.get_context("spawn").Pool(2) as pool:
        pids = pool.starmap(_record_in_child, [(url, prefix, T0, 50), (url, prefix, T0 + 0.5, 50)])
    assert os.getpid() not in pids
    tracker = RedisAvailabilityTracker(
        client=redis_client, prefix=prefix, window_seconds=300, bucket_seconds=1, clock=clock
    )
    figures = tracker.availability("paypal", "batch_create")
    assert (figures.calls, figures.successes, figures.avg_latency_ms) == (100, 50, 100.0)


@pytest.mark.parametrize("redis_url", ["from-environment", ""])
def test_module_functions_follow_the_settings(settings, prefix: str, redis_url: str):
    settings.REDIS_URL = os.environ["REDIS_URL"] if redis_url else ""
    settings.PROVIDER_STATE_KEY_PREFIX = prefix
    settings.PROVIDER_AVAILABILITY_WINDOW_SECONDS = 120
    expected = RedisAvailabilityTracker if redis_url else LocalAvailabilityTracker
    assert isinstance(availability_module.tracker(), expected)

    record_call("stripe", "refunds.create", OK, 40)
    record_call("stripe", "refunds.create", TIMEOUT, 60)

    figures = availability("stripe", "refunds.create")
    assert (figures.calls, figures.success_rate, figures.avg_latency_ms, figures.window_seconds) == (2, 0.5, 50.0, 120)
    assert [(a.provider, a.method) for a in all_availability()] == [("stripe", "refunds.create")]
