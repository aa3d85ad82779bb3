"""The circuit breaker on real Redis (and the in-process one used by the demo), time injected."""

import multiprocessing
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime

import pytest
import redis
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from providers.base import Declined, Pending, ProviderResult, Succeeded, Unknown
from providers.breaker import (
    STATE_TTL_SECONDS,
    BreakerConfig,
    BreakerState,
    CircuitBreaker,
    CircuitState,
    LocalCircuitBreaker,
    RedisCircuitBreaker,
    breaker_for,
    client_for_url,
)

T0 = 1_700_000_000.0
CONFIG = BreakerConfig(
    failure_threshold=3,
    success_threshold=2,
    half_open_max_calls=2,
    base_backoff_seconds=10.0,
    max_backoff_seconds=80.0,
    jitter=0.5,
    trial_timeout_seconds=30.0,
)
FAILURE = Unknown(reason="ReadTimeout: timed out")
SUCCESS = Succeeded(reference="po_1")


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
def redis_url() -> str:
    return os.environ["REDIS_URL"]  # tests/settings.py defaults it to the local Redis


@pytest.fixture
def prefix(redis_url: str) -> Iterator[str]:
    """A key prefix of this test's own; only its keys are deleted afterwards."""
    prefix = f"test:breaker:{uuid.uuid4().hex}"
    yield prefix
    client = redis.Redis.from_url(redis_url)
    for key in client.scan_iter(match=f"{prefix}:*"):
        client.delete(key)
    client.close()


@pytest.fixture
def redis_client(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


Make = Callable[..., CircuitBreaker]


@pytest.fixture(params=["redis", "local"])
def make_breaker(request, redis_client: redis.Redis, prefix: str, clock: FakeClock) -> Iterator[Make]:
    made: list[CircuitBreaker] = []

    def make(name: str = "paypal", draw: float = 0.0, config: BreakerConfig = CONFIG) -> CircuitBreaker:
        options = {"config": config, "prefix": prefix, "clock": clock, "rng": lambda: draw}
        if request.param == "redis":
            breaker: CircuitBreaker = RedisCircuitBreaker(name, client=redis_client, **options)
        else:
            breaker = LocalCircuitBreaker(name, **options)
        made.append(breaker)
        return breaker

    yield make
    for breaker in made:
        breaker.reset()


def open_breaker(breaker: CircuitBreaker) -> None:
    for _ in range(CONFIG.failure_threshold):
        breaker.record(FAILURE)
    assert breaker.state().state == CircuitState.OPEN


def test_a_new_breaker_is_closed_and_lets_calls_through(make_breaker: Make):
    breaker = make_breaker()
    assert breaker.allow() is True
    assert breaker.state() == BreakerState(
        name="paypal",
        state=CircuitState.CLOSED,
        failures=0,
        successes=0,
        trials_in_flight=0,
        times_opened=0,
        opened_at=None,
        retry_at=None,
    )


def test_opens_after_n_consecutive_failures(make_breaker: Make):
    breaker = make_breaker()
    breaker.record(FAILURE)
    breaker.record(Declined(reason="provider unreachable", code="not_sent", retryable=True))
    assert breaker.allow() is True
    assert (breaker.state().state, breaker.state().failures) == (CircuitState.CLOSED, 2)

    breaker.record(FAILURE)

    state = breaker.state()
    assert (state.state, state.failures, state.times_opened) == (CircuitState.OPEN, 3, 1)
    assert state.opened_at == at(T0)
    assert state.retry_at == at(T0 + 10.0)  # draw 0: the whole base backoff
    assert breaker.allow() is False


def test_a_success_resets_the_consecutive_failure_count(make_breaker: Make):
    breaker = make_breaker()
    for result in (FAILURE, FAILURE, SUCCESS, FAILURE, FAILURE):
        breaker.record(result)
    assert (breaker.state().state, breaker.state().failures) == (CircuitState.CLOSED, 2)


@pytest.mark.parametrize(
    "result",
    [
        Succeeded(reference="pi_1"),
        Pending(reference="batch_1"),
        Declined(reason="Your card was declined.", code="card_declined"),
        Declined(reason="Try again later", code="rate_limited", retryable=True),
    ],
)
def test_business_declines_and_answers_count_as_available(make_breaker: Make, result: ProviderResult):
    breaker = make_breaker()
    breaker.record(FAILURE)
    breaker.record(FAILURE)
    for _ in range(5):
        breaker.record(result)
    assert (breaker.state().state, breaker.state().failures) == (CircuitState.CLOSED, 0)


def test_our_own_circuit_open_answer_is_not_counted(make_breaker: Make):
    breaker = make_breaker()
    breaker.record(FAILURE)
    breaker.record(FAILURE)
    breaker.record(Declined(reason="circuit open", code="circuit_open", retryable=True))
    assert breaker.state().failures == 2  # neither a success (reset) nor a failure
    breaker.record(FAILURE)
    assert breaker.state().state == CircuitState.OPEN


def test_half_open_after_the_backoff_then_only_k_trials(make_breaker: Make, clock: FakeClock):
    breaker = make_breaker()
    open_breaker(breaker)
    clock.advance(9.999)
    assert breaker.allow() is False
    assert (breaker.state().state, breaker.is_refusing()) == (CircuitState.OPEN, True)

    clock.advance(0.001)
    assert (breaker.state().state, breaker.is_refusing()) == (CircuitState.HALF_OPEN, False)
    assert breaker.state().trials_in_flight == 0  # looking took no trial slot
    assert [breaker.allow() for _ in range(4)] == [True, True, False, False]
    assert breaker.state().trials_in_flight == 2


def test_jitter_shortens_the_backoff_by_the_drawn_fraction(make_breaker: Make, clock: FakeClock):
    breaker = make_breaker(draw=0.8)  # 10 s * (1 - 0.5 * 0.8) = 6 s
    open_breaker(breaker)
    assert breaker.state().retry_at == at(T0 + 6.0)
    clock.advance(5.99)
    assert breaker.allow() is False
    clock.advance(0.01)
    assert breaker.allow() is True


def test_closes_after_m_successes_in_half_open(make_breaker: Make, clock: FakeClock):
    breaker = make_breaker()
    open_breaker(breaker)
    clock.advance(10)
    assert breaker.allow() is True
    breaker.record(SUCCESS)
    state = breaker.state()
    assert (state.state, state.successes, state.trials_in_flight) == (CircuitState.HALF_OPEN, 1, 0)

    assert breaker.allow() is True
    breaker.record(SUCCESS)

    state = breaker.state()
    assert (state.state, state.failures, state.times_opened, state.opened_at) == (CircuitState.CLOSED, 0, 0, None)
    breaker.record(FAILURE)
    breaker.record(FAILURE)
    assert breaker.state().state == CircuitState.CLOSED  # a fresh count of N is needed again


def test_a_failure_in_half_open_reopens_with_a_doubled_capped_backoff(make_breaker: Make, clock: FakeClock):
    breaker = make_breaker()
    open_breaker(breaker)
    waits = []
    for _ in range(5):
        clock.now = breaker.state().retry_at.timestamp()
        assert breaker.allow() is True
        breaker.record(FAILURE)
        state = breaker.state()
        assert (state.state, state.opened_at) == (CircuitState.OPEN, at(clock.now))
        waits.append(round(state.retry_at.timestamp() - clock.now, 6))
    assert waits == [20.0, 40.0, 80.0, 80.0, 80.0]
    assert breaker.state().times_opened == 6


def test_the_backoff_starts_again_from_the_base_after_closing(make_breaker: Make, clock: FakeClock):
    breaker = make_breaker(config=BreakerConfig(failure_threshold=1, success_threshold=1, base_backoff_seconds=10))
    breaker.record(FAILURE)
    clock.advance(10)
    breaker.allow()
    breaker.record(FAILURE)  # reopened: 20 s
    clock.advance(20)
    breaker.allow()
    breaker.record(SUCCESS)  # closed
    breaker.record(FAILURE)
    assert breaker.state().retry_at == at(clock.now + 10)


def test_late_answers_while_open_change_nothing(make_breaker: Make):
    breaker = make_breaker()
    open_breaker(breaker)
    before = breaker.state()
    breaker.record(SUCCESS)
    breaker.record(SUCCESS)
    breaker.record(FAILURE)
    assert breaker.state() == before


def test_a_trial_that_never_reports_gives_its_slot_back(make_breaker: Make, clock: FakeClock):
    breaker = make_breaker()
    open_breaker(breaker)
    clock.advance(10)
    assert [breaker.allow(), breaker.allow(), breaker.allow()] == [True, True, False]
    clock.advance(29.9)
    assert breaker.allow() is False
    clock.advance(0.1)  # trial_timeout_seconds after the last trial was let through
    assert breaker.allow() is True
    assert breaker.state().trials_in_flight == 1


def test_only_k_trial_calls_pass_with_concurrent_callers(make_breaker: Make, clock: FakeClock):
    open_breaker(make_breaker())
    clock.advance(10)
    callers = 24
    breakers = [make_breaker() for _ in range(callers)]  # one object per caller, one shared state
    start = threading.Barrier(callers)
    allowed: list[bool] = []

    def call(breaker: CircuitBreaker) -> None:
        start.wait()
        allowed.append(breaker.allow())

    threads = [threading.Thread(target=call, args=(breaker,)) for breaker in breakers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert (allowed.count(True), allowed.count(False)) == (2, 22)


def test_reset_closes_the_circuit_and_forgets_its_history(make_breaker: Make):
    breaker = make_breaker()
    open_breaker(breaker)
    breaker.reset()
    assert breaker.allow() is True
    assert (breaker.state().state, breaker.state().times_opened) == (CircuitState.CLOSED, 0)


def test_each_provider_and_method_has_its_own_circuit(make_breaker: Make):
    open_breaker(make_breaker("paypal.batch_create"))
    assert make_breaker("paypal.batch_create").allow() is False
    assert make_breaker("paypal.batch_get").allow() is True
    assert make_breaker("paypal").allow() is True
    assert make_breaker("stripe").state().state == CircuitState.CLOSED


# --- The same machine in Lua and in Python: the two implementations agree step by step.

Step = str | float  # "allow", "ok", "fail", or seconds to wait
steps = st.lists(st.one_of(st.sampled_from(["allow", "ok", "fail"]), st.floats(0, 50)), max_size=40)


@hypothesis_settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(script=steps)
def test_redis_and_in_process_breakers_agree(redis_client: redis.Redis, script: list[Step]):
    clock, prefix = FakeClock(), f"test:breaker:{uuid.uuid4().hex}"
    options = {"config": CONFIG, "prefix": prefix, "clock": clock, "rng": lambda: 0.37}
    shared, local = RedisCircuitBreaker("p", client=redis_client, **options), LocalCircuitBreaker("p", **options)
    try:
        for step in script:
            if step == "allow":
                assert shared.allow() == local.allow()
            elif isinstance(step, float):
                clock.advance(step)
            else:
                shared.record(SUCCESS if step == "ok" else FAILURE)
                local.record(SUCCESS if step == "ok" else FAILURE)
            assert shared.state() == local.state()
    finally:
        shared.reset()
        local.reset()


# --- Redis specifics: shared across OS processes, fails open, chosen by settings.


def _redis_breaker_in_child(url: str, prefix: str, now: float) -> RedisCircuitBreaker:
    client = redis.Redis.from_url(url)  # this process's own client and connections
    return RedisCircuitBreaker("paypal", client=client, config=CONFIG, prefix=prefix, clock=lambda: now)


def _fail_in_child(url: str, prefix: str, now: float, failures: int) -> int:
    breaker = _redis_breaker_in_child(url, prefix, now)
    for _ in range(failures):
        breaker.record(FAILURE)
    return os.getpid()


def _observe_in_child(url: str, prefix: str, now: float) -> tuple[int, str, bool]:
    breaker = _redis_breaker_in_child(url, prefix, now)
    return os.getpid(), breaker.state().state.value, breaker.allow()


def _observe_local_in_child(prefix: str, now: float) -> tuple[int, str, bool]:
    breaker = LocalCircuitBreaker("paypal", config=CONFIG, prefix=prefix, clock=lambda: now)
    return os.getpid(), breaker.state().state.value, breaker.allow()


def _try_trials_in_child(url: str, prefix: str, now: float, start, results) -> None:
    breaker = _redis_breaker_in_child(url, prefix, now)
    start.wait()
    results.put(sum(breaker.allow() for _ in range(5)))


def in_another_process(function: Callable, *args: object):
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        return pool.apply(function, args)


@pytest.mark.slow
def test_failures_in_separate_processes_open_the_one_shared_circuit(redis_url: str, prefix: str):
    pid_a = in_another_process(_fail_in_child, redis_url, prefix, T0, 2)
    pid_b, seen_by_b, allowed_in_b = in_another_process(_observe_in_child, redis_url, prefix, T0)
    assert (seen_by_b, allowed_in_b) == ("closed", True)  # 2 of 3 failures so far

    pid_c = in_another_process(_fail_in_child, redis_url, prefix, T0, 1)
    pid_d, seen_by_d, allowed_in_d = in_another_process(_observe_in_child, redis_url, prefix, T0)

    assert len({pid_a, pid_b, pid_c, pid_d, os.getpid()}) == 5
    assert (seen_by_d, allowed_in_d) == ("open", False)
    here = RedisCircuitBreaker("paypal", client=redis.Redis.from_url(redis_url), config=CONFIG, prefix=prefix)
    assert here.state().failures == 3


@pytest.mark.slow
def test_the_in_process_breaker_is_not_shared_which_is_why_it_is_demo_only(prefix: str):
    breaker = LocalCircuitBreaker("paypal", config=CONFIG, prefix=prefix, clock=lambda: T0)
    open_breaker(breaker)
    try:
        pid, seen, allowed = in_another_process(_observe_local_in_child, prefix, T0)
    finally:
        breaker.reset()
    assert (pid != os.getpid(), seen, allowed) == (True, "closed", True)


@pytest.mark.slow
def test_only_k_trials_pass_across_processes(redis_url: str, redis_client: redis.Redis, prefix: str):
    open_breaker(RedisCircuitBreaker("paypal", client=redis_client, config=CONFIG, prefix=prefix, clock=lambda: T0))
    context = multiprocessing.get_context("spawn")
    start, results = context.Barrier(4), context.Queue()
    processes = [
        context.Process(target=_try_trials_in_child, args=(redis_url, prefix, T0 + 10, start, results))
        for _ in range(4)
    ]
    for process in processes:
        process.start()
    admitted = [results.get(timeout=30) for _ in processes]
    for process in processes:
        process.join(timeout=30)
    assert [process.exitcode for process in processes] == [0, 0, 0, 0]
    assert sum(admitted) == CONFIG.half_open_max_calls


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_a_redis_outage_lets_calls_through_quickly_but_shows_in_state(prefix: str):
    client = client_for_url(f"redis://127.0.0.1:{closed_port()}/0")  # the client breaker_for uses
    breaker = RedisCircuitBreaker("paypal", client=client, config=CONFIG, prefix=prefix)
    started = time.monotonic()
    for _ in range(5):
        breaker.record(FAILURE)
    assert breaker.allow() is True
    assert breaker.is_refusing() is False
    assert time.monotonic() - started < 3.0  # no retry loop per command (redis-py's default waits seconds)
    with pytest.raises(redis.ConnectionError):
        breaker.state()


def test_breaker_for_shares_state_through_redis_with_per_provider_settings(settings, redis_url: str, prefix: str):
    settings.REDIS_URL = redis_url
    settings.PROVIDER_STATE_KEY_PREFIX = prefix
    settings.PROVIDER_BREAKER_DEFAULTS = {"failure_threshold": 4, "base_backoff_seconds": 30.0}
    settings.PROVIDER_BREAKERS = {"paypal": {"failure_threshold": 2}}

    breaker = breaker_for("paypal", clock=lambda: T0, rng=lambda: 0.0)
    assert isinstance(breaker, RedisCircuitBreaker)
    assert (breaker.config.failure_threshold, breaker_for("stripe").config.failure_threshold) == (2, 4)
    breaker.record(FAILURE)
    breaker.record(FAILURE)

    assert breaker_for("paypal", clock=lambda: T0).allow() is False  # a new object, the same circuit
    assert breaker_for("paypal", "batch_get").allow() is True
    assert breaker_for("paypal").state().retry_at == at(T0 + 30.0)


def test_breaker_for_without_redis_is_in_process(settings, prefix: str):
    settings.REDIS_URL = ""
    settings.PROVIDER_STATE_KEY_PREFIX = prefix
    breaker = breaker_for("maya")
    assert isinstance(breaker, LocalCircuitBreaker)
    for _ in range(breaker.config.failure_threshold):
        breaker.record(FAILURE)
    assert breaker_for("maya").allow() is False
    breaker.reset()


def test_redis_keeps_one_expiring_hash_per_circuit_and_drops_it_on_closing(redis_client: redis.Redis, prefix: str):
    clock = FakeClock()
    breaker = RedisCircuitBreaker("paypal", client=redis_client, config=CONFIG, prefix=prefix, clock=clock)
    open_breaker(breaker)
    key = f"{prefix}:breaker:paypal"
    assert redis_client.hget(key, "state") == b"open"
    assert 0 < redis_client.ttl(key) <= STATE_TTL_SECONDS
    clock.advance(10)
    for _ in range(CONFIG.success_threshold):
        assert breaker.allow() is True
        breaker.record(SUCCESS)
    assert redis_client.exists(key) == 0
