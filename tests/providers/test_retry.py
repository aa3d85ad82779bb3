"""Retries only where repeating is safe (same key, idempotent provider), bounded backoff, breaker respected."""

import functools
import os
import random
import re
import threading
import uuid
from collections.abc import Iterator

import httpx
import pytest
import redis

from providers.availability import availability
from providers.base import (
    Declined,
    Pending,
    ProviderResult,
    Succeeded,
    Unknown,
    outcome_of_server_error,
    outcome_of_transport_error,
)
from providers.breaker import BreakerConfig, CircuitState, RedisCircuitBreaker, breaker_for
from providers.retry import call_provider, call_with_retries
from providers.sandbox.server import Fault, Sandbox, SandboxRequest, SandboxResponse

KEY = "payout-item-42"
UNKNOWN = Unknown(reason="ReadTimeout: timed out")
NOT_SENT = Declined(reason="provider unreachable", code="not_sent", retryable=True)
PAID = Succeeded(reference="po_1")


class ScriptedProvider:
    """Answers from a script (the last answer repeats) and notes the idempotency key of every request."""

    def __init__(self, *answers: ProviderResult) -> None:
        self.answers = list(answers)
        self.keys: list[str] = []

    def send(self, idempotency_key: str) -> ProviderResult:
        self.keys.append(idempotency_key)
        return self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]


class Sleeps(list):
    def __call__(self, seconds: float) -> None:
        self.append(seconds)


@pytest.fixture
def sleeps() -> Sleeps:
    return Sleeps()


@pytest.fixture
def prefix() -> Iterator[str]:
    prefix = f"test:retry:{uuid.uuid4().hex}"
    yield prefix
    client = redis.Redis.from_url(os.environ["REDIS_URL"])
    for key in client.scan_iter(match=f"{prefix}:*"):
        client.delete(key)
    client.close()


@pytest.fixture
def breaker(prefix: str) -> RedisCircuitBreaker:
    config = BreakerConfig(failure_threshold=2, success_threshold=1, base_backoff_seconds=60, jitter=0)
    return RedisCircuitBreaker(
        "paypal", client=redis.Redis.from_url(os.environ["REDIS_URL"]), config=config, prefix=prefix
    )


def retry(provider: ScriptedProvider, sleeps: Sleeps, **options) -> ProviderResult:
    options = {"attempts": 4, "base_delay": 0.5, "max_delay": 2.0, "rng": lambda: 1.0, **options}
    return call_with_retries(functools.partial(provider.send, KEY), sleep=sleeps, **options)


@pytest.mark.parametrize("answer", [UNKNOWN, NOT_SENT, Declined(reason="busy", code="rate_limit", retryable=True)])
def test_nothing_is_retried_unless_the_caller_says_the_call_is_idempotent(answer, sleeps):
    provider = ScriptedProvider(answer, PAID)
    assert retry(provider, sleeps) == answer
    assert (provider.keys, sleeps) == ([KEY], [])


def test_an_idempotent_call_is_repeated_with_the_same_key_until_it_is_answered(sleeps):
    provider = ScriptedProvider(UNKNOWN, NOT_SENT, PAID)
    assert retry(provider, sleeps, idempotent=True) == PAID
    assert provider.keys == [KEY, KEY, KEY]
    assert sleeps == [0.5, 1.0]


@pytest.mark.parametrize(
    "answer",
    [PAID, Pending(reference="batch_1"), Declined(reason="Your card was declined.", code="card_declined")],
)
def test_final_answers_are_not_retried(answer, sleeps):
    provider = ScriptedProvider(answer, PAID)
    assert retry(provider, sleeps, idempotent=True) == answer
    assert provider.keys == [KEY]


def test_the_backoff_doubles_up_to_the_cap_and_attempts_are_bounded(sleeps):
    provider = ScriptedProvider(UNKNOWN)
    result = retry(provider, sleeps, idempotent=True, attempts=6, base_delay=1.0, max_delay=5.0)
    assert result == UNKNOWN
    assert len(provider.keys) == 6
    assert sleeps == [1.0, 2.0, 4.0, 5.0, 5.0]


def test_full_jitter_draws_each_wait_below_its_exponential_cap(sleeps):
    draws = iter([0.5, 0.25, 0.1])
    retry(ScriptedProvider(UNKNOWN), sleeps, idempotent=True, base_delay=1.0, max_delay=3.0, rng=lambda: next(draws))
    assert sleeps == pytest.approx([0.5, 0.5, 0.3])

    seeded = Sleeps()
    retry(
        ScriptedProvider(UNKNOWN),
        seeded,
        idempotent=True,
        attempts=8,
        base_delay=1.0,
        max_delay=3.0,
        rng=random.Random(7).random,
    )
    caps = [1.0, 2.0, 3.0, 3.0, 3.0, 3.0, 3.0]
    assert all(0 <= wait < cap for wait, cap in zip(seeded, caps, strict=True))
    assert len(set(seeded)) == 7  # jittered, not the fixed schedule


def test_a_decline_after_an_unknown_stays_unknown(sleeps):
    # PayPal refuses a reused sender_batch_id: that refusal is no proof the first send did nothing.
    provider = ScriptedProvider(UNKNOWN, Declined(reason="duplicate sender_batch_id", code="duplicate_request_id"))
    assert retry(provider, sleeps, idempotent=True) == UNKNOWN
    assert provider.keys == [KEY, KEY]


def test_an_unknown_that_never_resolves_is_returned_not_a_retryable_decline(sleeps):
    provider = ScriptedProvider(UNKNOWN, NOT_SENT)
    assert retry(provider, sleeps, idempotent=True) == UNKNOWN
    assert len(provider.keys) == 4


def test_no_call_while_the_circuit_is_open(breaker, sleeps):
    breaker.record(UNKNOWN)
    breaker.record(UNKNOWN)
    provider = ScriptedProvider(PAID)
    result = retry(provider, sleeps, idempotent=True, breaker=breaker)
    assert isinstance(result, Declined)
    assert (result.code, result.retryable) == ("circuit_open", True)
    assert (provider.keys, sleeps) == ([], [])


def test_a_circuit_that_opens_during_retries_stops_them_and_the_unknown_stands(breaker, sleeps):
    provider = ScriptedProvider(UNKNOWN)
    assert retry(provider, sleeps, idempotent=True, attempts=5, breaker=breaker) == UNKNOWN
    assert provider.keys == [KEY, KEY]  # the second failure opened it
    assert breaker.state().state == CircuitState.OPEN


def test_every_call_made_is_recorded_on_the_breaker(breaker, sleeps):
    breaker.record(UNKNOWN)
    assert retry(ScriptedProvider(PAID), sleeps, breaker=breaker) == PAID
    assert breaker.state().failures == 0
    retry(ScriptedProvider(UNKNOWN), sleeps, breaker=breaker)
    assert breaker.state().failures == 1


def test_an_answer_that_cannot_settle_it_yet_is_a_healthy_call_and_not_asked_again_at_once(breaker, sleeps):
    lagging = Unknown(reason="no PaymentIntent for the key yet; Search may lag", answered=True)
    for _ in range(breaker.config.failure_threshold + 1):
        provider = ScriptedProvider(lagging, PAID)
        assert retry(provider, sleeps, idempotent=True, breaker=breaker) == lagging
        assert provider.keys == [KEY]
    assert (breaker.state().state, breaker.state().failures, sleeps) == (CircuitState.CLOSED, 0, [])


def test_a_look_up_nobody_made_is_not_counted(breaker):
    breaker.record(UNKNOWN)
    breaker.record(Unknown(reason="not looked up: circuit open", asked=False))
    assert breaker.state().failures == 1


def test_each_attempt_is_observed_with_its_latency(sleeps):
    ticks = iter([10.0, 10.25, 11.0, 11.5])
    observed: list[tuple[ProviderResult, float]] = []
    retry(
        ScriptedProvider(UNKNOWN, PAID),
        sleeps,
        idempotent=True,
        clock=lambda: next(ticks),
        on_attempt=lambda result, ms: observed.append((result, ms)),
    )
    assert observed == [(UNKNOWN, 250.0), (PAID, 500.0)]


def test_at_least_one_attempt():
    with pytest.raises(ValueError, match="attempts"):
        call_with_retries(lambda: PAID, attempts=0, base_delay=1, max_delay=1)


def test_call_provider_uses_the_provider_breaker_and_availability(settings, prefix, sleeps):
    settings.PROVIDER_STATE_KEY_PREFIX = prefix
    settings.PROVIDER_BREAKERS = {"paypal": {"failure_threshold": 2, "base_backoff_seconds": 60}}
    provider = ScriptedProvider(UNKNOWN, PAID)

    assert (
        call_provider("paypal", "batch_create", functools.partial(provider.send, KEY), idempotent=True, sleep=sleeps)
        == PAID
    )

    assert provider.keys == [KEY, KEY]
    figures = availability("paypal", "batch_create")
    assert (figures.calls, figures.successes) == (2, 1)
    assert breaker_for("paypal").state().failures == 0
    for _ in range(2):
        breaker_for("paypal").record(UNKNOWN)
    refused = call_provider(
        "paypal", "batch_create", functools.partial(provider.send, KEY), idempotent=True, sleep=sleeps
    )
    assert isinstance(refused, Declined) and refused.code == "circuit_open"
    assert len(provider.keys) == 2
    assert availability("paypal", "batch_create").calls == 2  # a call not made is not counted


# --- Over real HTTP: the sandbox applies the transfer, then the caller times out (the unknown outcome).

TRANSFERS: dict[str, dict] = {}
TRANSFERS_LOCK = threading.Lock()


def install_idempotent_route(sandbox: Sandbox) -> None:
    if any(route.operation == "test.transfer" for route in sandbox.routes):
        return

    @sandbox.route("POST", "/test/transfers", "test.transfer")
    def transfer(request: SandboxRequest, match: re.Match[str]) -> SandboxResponse:
        key = request.header("Idempotency-Key")
        with TRANSFERS_LOCK:  # replay the first answer for a key, as Stripe does
            created = TRANSFERS.setdefault(key, {"id": f"tr_{len(TRANSFERS) + 1}", **request.json()})
        return SandboxResponse(200, created)


@pytest.fixture
def box(sandbox: Sandbox) -> Sandbox:
    install_idempotent_route(sandbox)
    TRANSFERS.clear()
    return sandbox


def send_transfer(box: Sandbox, key: str) -> ProviderResult:
    try:
        response = httpx.post(
            f"{box.url}/test/transfers", json={"amount_minor": 1500}, headers={"Idempotency-Key": key}, timeout=0.3
        )
    except httpx.TransportError as error:
        return outcome_of_transport_error(error)
    if response.status_code >= 500:
        return outcome_of_server_error(response.status_code, response.json())
    return Succeeded(reference=response.json()["id"])


def test_an_applied_then_timed_out_call_is_settled_by_replaying_the_same_key(box, sleeps):
    box.add_fault(Fault(operation="test.transfer", kind="applied_then_timeout"))
    result = call_with_retries(
        functools.partial(send_transfer, box, "transfer-7"),
        attempts=3,
        base_delay=0,
        max_delay=0,
        idempotent=True,
        sleep=sleeps,
    )
    assert result == Succeeded(reference="tr_1")
    assert box.calls["test.transfer"] == 2
    assert list(TRANSFERS) == ["transfer-7"]  # the money moved once


def test_without_idempotency_the_applied_then_timed_out_call_stays_unknown(box, sleeps):
    box.add_fault(Fault(operation="test.transfer", kind="applied_then_timeout"))
    result = call_with_retries(
        functools.partial(send_transfer, box, "transfer-8"), attempts=3, base_delay=0, max_delay=0, sleep=sleeps
    )
    assert isinstance(result, Unknown)
    assert box.calls["test.transfer"] == 1
    assert list(TRANSFERS) == ["transfer-8"]  # it did move: Unknown, never Declined
