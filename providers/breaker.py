"""A circuit breaker per provider (optionally per provider method), shared by every process.

closed --N consecutive failures--> open --backoff elapsed--> half-open --M successes--> closed
                                     ^------------- any failure in half-open ---------'

- Availability, not business outcome, is what counts: `Succeeded`, `Pending` and a
  `Declined` for a business reason (a card decline) are successes; `Unknown` and
  `Declined(code="not_sent")` are failures. `Declined(code="circuit_open")` is our
  own answer for a call never made and is not recorded at all.
- The backoff before half-open grows with the number of times the circuit opened in
  a row (base * 2**(n-1), capped), shortened by up to `jitter` of itself so circuits
  that opened together do not all probe at the same instant.
- Half-open lets at most `half_open_max_calls` trial calls be in flight at once across
  all processes. A trial that never reports (a crashed worker) gives its slot back
  after `trial_timeout_seconds`, so the circuit cannot stay stuck half-open.
- With REDIS_URL set the state is a Redis hash changed only by Lua scripts, so every
  transition is atomic across processes. Timestamps come from the caller's clock
  (injectable for tests), so hosts need synchronised clocks (NTP).
- Without REDIS_URL (the embedded demo) the state lives in this process's memory:
  each process has its own breakers. That is for the demo only.
- A Redis outage must not stop payments: `allow()` then answers True, `is_refusing()`
  False, and `record()` drops the result, all with a warning; `state()` and `reset()`
  raise, so health checks and staff see the problem.
- `record()` returns the transition it made (OPEN when the circuit opened, CLOSED when a
  half-open circuit closed, else None) and passes it to the breaker's `on_change`
  observer: the payment path wires the staff alert there (providers.health).
"""

from __future__ import annotations

import logging
import random
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from enum import StrEnum
from functools import cache

import redis
from django.conf import settings
from redis.backoff import NoBackoff
from redis.retry import Retry

from providers.base import Declined, ProviderResult, Unknown

logger = logging.getLogger(__name__)

Clock = Callable[[], float]  # seconds since the epoch
Random = Callable[[], float]  # uniform in [0, 1)
ChangeObserver = Callable[["CircuitBreaker", "CircuitState"], None]  # the breaker, the state it moved to

NOT_CALLED_CODES = frozenset({"circuit_open"})  # our own answers when we did not call
FAILURE_CODES = frozenset({"not_sent"})  # declines that say the provider could not be reached
# A circuit left alone this long is forgotten (closed): far beyond any backoff, and it keeps
# circuits of renamed methods or test runs from piling up in Redis.
STATE_TTL_SECONDS = 7 * 24 * 3600


class CircuitState(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class CallOutcome(StrEnum):
    SUCCESS = "success"
    FAILURE = "failure"
    NOT_CALLED = "not_called"


def call_outcome(result: ProviderResult) -> CallOutcome:
    """How a result counts for the provider's availability (not for the payment)."""
    if isinstance(result, Unknown):
        if not result.asked:
            return CallOutcome.NOT_CALLED
        return CallOutcome.SUCCESS if result.answered else CallOutcome.FAILURE
    if isinstance(result, Declined) and result.code in NOT_CALLED_CODES:
        return CallOutcome.NOT_CALLED
    if isinstance(result, Declined) and result.code in FAILURE_CODES:
        return CallOutcome.FAILURE
    return CallOutcome.SUCCESS


@dataclass(frozen=True)
class BreakerConfig:
    failure_threshold: int = 5  # consecutive failures that open a closed circuit
    success_threshold: int = 2  # successes in half-open that close it
    half_open_max_calls: int = 1  # trial calls in flight at once in half-open
    base_backoff_seconds: float = 30.0
    max_backoff_seconds: float = 600.0
    jitter: float = 0.2  # the backoff is shortened by up to this fraction of itself
    trial_timeout_seconds: float = 60.0  # keep above the provider call timeout

    def __post_init__(self) -> None:
        if min(self.failure_threshold, self.success_threshold, self.half_open_max_calls) < 1:
            raise ValueError("breaker thresholds and half_open_max_calls must be at least 1")
        if not 0.0 <= self.jitter <= 1.0:
            raise ValueError("breaker jitter is a fraction between 0 and 1")
        if not 0 < self.base_backoff_seconds <= self.max_backoff_seconds:
            raise ValueError("breaker backoff needs 0 < base_backoff_seconds <= max_backoff_seconds")

    def backoff_seconds(self, times_opened: int, draw: float) -> float:
        backoff = min(self.max_backoff_seconds, self.base_backoff_seconds * 2.0 ** min(times_opened - 1, 64))
        return backoff * (1.0 - self.jitter * draw)


@dataclass(frozen=True)
class BreakerState:
    """What the admin, health checks and routing see."""

    name: str
    state: CircuitState
    failures: int  # consecutive failures
    successes: int  # successes so far in half-open
    trials_in_flight: int
    times_opened: int  # in a row, since the circuit was last closed
    opened_at: datetime | None
    retry_at: datetime | None

    @property
    def is_open(self) -> bool:
        return self.state == CircuitState.OPEN


@dataclass
class _Circuit:
    """The stored state, and the state machine that the Lua scripts below mirror."""

    state: CircuitState = CircuitState.CLOSED
    failures: int = 0
    successes: int = 0
    trials: int = 0
    opened: int = 0
    opened_at: float | None = None
    retry_at: float | None = None
    trial_at: float | None = None

    @classmethod
    def from_hash(cls, fields: dict[str, str]) -> _Circuit:
        def number(name: str) -> float | None:
            return float(fields[name]) if name in fields else None

        return cls(
            state=CircuitState(fields.get("state", CircuitState.CLOSED)),
            failures=int(fields.get("failures", 0)),
            successes=int(fields.get("successes", 0)),
            trials=int(fields.get("trials", 0)),
            opened=int(fields.get("opened", 0)),
            opened_at=number("opened_at"),
            retry_at=number("retry_at"),
            trial_at=number("trial_at"),
        )

    def allow(self, now: float, config: BreakerConfig) -> bool:
        if self.state == CircuitState.CLOSED:
            return True
        if self.state == CircuitState.OPEN:
            if now < (self.retry_at or 0.0):
                return False
            self.state, self.successes, self.trials = CircuitState.HALF_OPEN, 0, 0
        if self.trials >= config.half_open_max_calls:
            if now - (self.trial_at or 0.0) < config.trial_timeout_seconds:
                return False
            self.trials = 0  # the trials never reported: reclaim their slots
        self.trials += 1
        self.trial_at = now
        return True

    def record(self, now: float, failed: bool, config: BreakerConfig, draw: float) -> None:
        if self.state == CircuitState.OPEN:
            return  # the late answer of a call let through before the circuit opened
        if failed:
            self.failures += 1
            if self.state == CircuitState.HALF_OPEN or self.failures >= config.failure_threshold:
                self._open(now, config, draw)
        elif self.state == CircuitState.CLOSED:
            self.failures = 0
        else:
            self.successes += 1
            self.trials = max(self.trials - 1, 0)
            if self.successes >= config.success_threshold:
                self._close()

    def _close(self) -> None:
        """Closed with every counter at zero, so the next opening backs off from the base again."""
        self.state, self.failures, self.successes, self.trials, self.opened = CircuitState.CLOSED, 0, 0, 0, 0
        self.opened_at = self.retry_at = self.trial_at = None

    def _open(self, now: float, config: BreakerConfig, draw: float) -> None:
        self.opened += 1
        self.state, self.successes, self.trials = CircuitState.OPEN, 0, 0
        self.opened_at = now
        self.retry_at = now + config.backoff_seconds(self.opened, draw)

    def view(self, name: str, now: float) -> BreakerState:
        state = self.state
        if state == CircuitState.OPEN and now >= (self.retry_at or 0.0):
            state = CircuitState.HALF_OPEN  # becomes so on the next allow()
        return BreakerState(
            name=name,
            state=state,
            failures=self.failures,
            successes=self.successes if state == self.state else 0,
            trials_in_flight=self.trials if state == self.state else 0,
            times_opened=self.opened,
            opened_at=_datetime(self.opened_at),
            retry_at=_datetime(self.retry_at),
        )


def _datetime(timestamp: float | None) -> datetime | None:
    return None if timestamp is None else datetime.fromtimestamp(timestamp, tz=UTC)


class CircuitBreaker(ABC):
    def __init__(
        self,
        name: str,
        *,
        config: BreakerConfig,
        prefix: str,
        clock: Clock = time.time,
        rng: Random = random.random,
        on_change: ChangeObserver | None = None,
    ) -> None:
        self.name = name
        self.config = config
        self.key = f"{prefix}:breaker:{name}"
        self.clock = clock
        self.rng = rng
        self.on_change = on_change

    @abstractmethod
    def allow(self) -> bool:
        """May we call the provider now? In half-open, True takes one of the trial slots."""

    def record(self, result: ProviderResult) -> CircuitState | None:
        """Count the result of a call that `allow()` let through; the transition it made, if any."""
        outcome = call_outcome(result)
        if outcome == CallOutcome.NOT_CALLED:
            return None
        changed = self._record(failed=outcome == CallOutcome.FAILURE)
        if changed is not None and self.on_change is not None:
            self.on_change(self, changed)
        return changed

    @abstractmethod
    def _record(self, *, failed: bool) -> CircuitState | None:
        """Count one call; OPEN if that opened the circuit, CLOSED if it closed it, else None."""

    @abstractmethod
    def state(self) -> BreakerState: ...

    def is_refusing(self) -> bool:
        """Is the circuit open now (not yet due for a trial)? For routing: reads only (takes
        no trial slot) and says False when Redis is down, like `allow()`; use `state()` where
        the outage must show."""
        try:
            return self.state().is_open
        except redis.RedisError:
            logger.warning("circuit breaker %s: Redis unavailable, treating it as closed", self.name, exc_info=True)
            return False

    @abstractmethod
    def reset(self) -> None:
        """Close the circuit and forget its history (a staff action)."""


# KEYS[1] the circuit hash. ARGV: now, half_open_max_calls, trial_timeout_seconds, ttl. Mirrors _Circuit.allow.
_ALLOW_LUA = """
local key = KEYS[1]
local now = tonumber(ARGV[1])
local state = redis.call('HGET', key, 'state')
if not state or state == 'closed' then return 1 end
if state == 'open' then
  if now < tonumber(redis.call('HGET', key, 'retry_at')) then return 0 end
  redis.call('HSET', key, 'state', 'half_open', 'successes', 0, 'trials', 0)
end
local trials = tonumber(redis.call('HGET', key, 'trials') or '0')
if trials >= tonumber(ARGV[2]) then
  if now - tonumber(redis.call('HGET', key, 'trial_at') or '0') < tonumber(ARGV[3]) then return 0 end
  trials = 0
end
redis.call('HSET', key, 'trials', trials + 1, 'trial_at', ARGV[1])
redis.call('EXPIRE', key, ARGV[4])
return 1
"""

# KEYS[1] the circuit hash. ARGV: now, failed (0/1), failure_threshold, success_threshold,
# base_backoff, max_backoff, jitter, draw, ttl. Mirrors _Circuit.record. Returns the state after, or
# 'opened' / 'reclosed' when this call opened or closed the circuit.
_RECORD_LUA = """
local key = KEYS[1]
local now = tonumber(ARGV[1])
local state = redis.call('HGET', key, 'state') or 'closed'
if state == 'open' then return state end
if ARGV[2] == '1' then
  local failures = redis.call('HINCRBY', key, 'failures', 1)
  if state == 'closed' and failures < tonumber(ARGV[3]) then
    redis.call('HSET', key, 'state', 'closed')
    redis.call('EXPIRE', key, ARGV[9])
    return 'closed'
  end
  local opened = redis.call('HINCRBY', key, 'opened', 1)
  local backoff = math.min(tonumber(ARGV[6]), tonumber(ARGV[5]) * 2 ^ math.min(opened - 1, 64))
  local retry_at = now + backoff * (1 - tonumber(ARGV[7]) * tonumber(ARGV[8]))
  redis.call('HSET', key, 'state', 'open', 'successes', 0, 'trials', 0,
             'opened_at', ARGV[1], 'retry_at', string.format('%.17g', retry_at))
  redis.call('EXPIRE', key, ARGV[9])
  return 'opened'
end
if state == 'closed' then
  if redis.call('EXISTS', key) == 1 then redis.call('HSET', key, 'failures', 0) end
  return 'closed'
end
local successes = redis.call('HINCRBY', key, 'successes', 1)
if successes >= tonumber(ARGV[4]) then
  redis.call('DEL', key)
  return 'reclosed'
end
if tonumber(redis.call('HGET', key, 'trials') or '0') > 0 then redis.call('HINCRBY', key, 'trials', -1) end
redis.call('EXPIRE', key, ARGV[9])
return 'half_open'
"""


class RedisCircuitBreaker(CircuitBreaker):
    """State in one Redis hash, changed only by Lua scripts: atomic across processes."""

    def __init__(
        self,
        name: str,
        *,
        client: redis.Redis,
        config: BreakerConfig,
        prefix: str,
        clock: Clock = time.time,
        rng: Random = random.random,
        on_change: ChangeObserver | None = None,
    ) -> None:
        super().__init__(name, config=config, prefix=prefix, clock=clock, rng=rng, on_change=on_change)
        self.client = client
        self._allow_script = client.register_script(_ALLOW_LUA)
        self._record_script = client.register_script(_RECORD_LUA)

    def allow(self) -> bool:
        args = [_num(self.clock()), self.config.half_open_max_calls, _num(self.config.trial_timeout_seconds)]
        args.append(STATE_TTL_SECONDS)
        try:
            return bool(self._allow_script(keys=[self.key], args=args))
        except redis.RedisError:
            logger.warning("circuit breaker %s: Redis unavailable, letting the call through", self.name, exc_info=True)
            return True

    def _record(self, *, failed: bool) -> CircuitState | None:
        c = self.config
        args = [_num(self.clock()), int(failed), c.failure_threshold, c.success_threshold]
        args += [_num(c.base_backoff_seconds), _num(c.max_backoff_seconds), _num(c.jitter), _num(self.rng())]
        args.append(STATE_TTL_SECONDS)
        try:
            after = _text(self._record_script(keys=[self.key], args=args))
        except redis.RedisError:
            logger.warning("circuit breaker %s: Redis unavailable, result not counted", self.name, exc_info=True)
            return None
        return {"opened": CircuitState.OPEN, "reclosed": CircuitState.CLOSED}.get(after)

    def state(self) -> BreakerState:
        fields = {_text(k): _text(v) for k, v in self.client.hgetall(self.key).items()}  # type: ignore[union-attr]
        return _Circuit.from_hash(fields).view(self.name, self.clock())

    def reset(self) -> None:
        self.client.delete(self.key)


def _num(value: float) -> str:
    return repr(float(value))


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


_LOCAL_LOCK = threading.Lock()
_LOCAL_CIRCUITS: dict[str, _Circuit] = {}


class LocalCircuitBreaker(CircuitBreaker):
    """The same machine in this process's memory: each process has its own. Demo only."""

    def allow(self) -> bool:
        with _LOCAL_LOCK:
            return _LOCAL_CIRCUITS.setdefault(self.key, _Circuit()).allow(self.clock(), self.config)

    def _record(self, *, failed: bool) -> CircuitState | None:
        with _LOCAL_LOCK:
            circuit = _LOCAL_CIRCUITS.setdefault(self.key, _Circuit())
            before = circuit.state
            circuit.record(self.clock(), failed, self.config, self.rng())
            after = circuit.state
        if before == after or after == CircuitState.HALF_OPEN:
            return None
        return after  # OPEN (from closed or half-open), or CLOSED (from half-open)

    def state(self) -> BreakerState:
        with _LOCAL_LOCK:
            circuit = replace(_LOCAL_CIRCUITS.get(self.key) or _Circuit())
        return circuit.view(self.name, self.clock())

    def reset(self) -> None:
        with _LOCAL_LOCK:
            _LOCAL_CIRCUITS.pop(self.key, None)


@cache
def client_for_url(url: str) -> redis.Redis:
    """One client (and connection pool) per process and URL.

    No client-side retries: redis-py's default would wait seconds per command while Redis is
    down, stalling every payment, and would re-run a script whose reply was lost (counting a
    failure twice). A failed command is answered by failing open instead (see above).
    """
    return redis.Redis.from_url(
        url, socket_connect_timeout=0.5, socket_timeout=0.5, health_check_interval=30, retry=Retry(NoBackoff(), 0)
    )


def shared_redis() -> redis.Redis | None:
    """The Redis client for provider state, or None in the embedded demo (no REDIS_URL)."""
    url = settings.REDIS_URL
    return client_for_url(url) if url else None


def state_key_prefix() -> str:
    return str(getattr(settings, "PROVIDER_STATE_KEY_PREFIX", "bo:providers"))


def breaker_config(provider: str) -> BreakerConfig:
    """Defaults from settings, then the provider's own overrides."""
    options = dict(getattr(settings, "PROVIDER_BREAKER_DEFAULTS", {}))
    options.update(getattr(settings, "PROVIDER_BREAKERS", {}).get(provider, {}))
    return BreakerConfig(**options)


def breaker_for(
    provider: str,
    method: str | None = None,
    *,
    clock: Clock = time.time,
    rng: Random = random.random,
    on_change: ChangeObserver | None = None,
) -> CircuitBreaker:
    """The provider's breaker (or the breaker of one of its methods, with its own state)."""
    name = provider if method is None else f"{provider}.{method}"
    config, prefix, client = breaker_config(provider), state_key_prefix(), shared_redis()
    if client is None:
        return LocalCircuitBreaker(name, config=config, prefix=prefix, clock=clock, rng=rng, on_change=on_change)
    return RedisCircuitBreaker(
        name, client=client, config=config, prefix=prefix, clock=clock, rng=rng, on_change=on_change
    )
