"""How available each provider method has been lately: feeds routing and the dashboard.

Per provider and method we keep, over a sliding window (PROVIDER_AVAILABILITY_WINDOW_SECONDS,
5 minutes by default): calls, successes (as the circuit breaker counts them: a card decline
is a success for availability), the average latency, and the last success and failure.

Samples are summed into buckets of PROVIDER_AVAILABILITY_BUCKET_SECONDS, so the window is
exact to one bucket. With REDIS_URL set, buckets live in Redis (a sorted set of bucket
starts plus a hash of counters), every process adds to the same figures, and each write
prunes the buckets that left the window in the same Lua script; idle series expire. Without
REDIS_URL (the embedded demo) each process keeps its own figures in memory.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from datetime import UTC, datetime

import redis
from django.conf import settings

from providers.base import ProviderResult
from providers.breaker import CallOutcome, Clock, call_outcome, shared_redis, state_key_prefix

logger = logging.getLogger(__name__)

LAST_SEEN_TTL_SECONDS = 30 * 24 * 3600  # how long the last success/failure of an idle method is kept


@dataclass(frozen=True)
class Availability:
    provider: str
    method: str
    window_seconds: int
    calls: int
    successes: int
    avg_latency_ms: float | None
    last_success_at: datetime | None
    last_failure_at: datetime | None

    @property
    def failures(self) -> int:
        return self.calls - self.successes

    @property
    def success_rate(self) -> float | None:
        """Successes / calls in the window; None when there were no calls to judge by."""
        return self.successes / self.calls if self.calls else None


@dataclass
class _Totals:
    calls: int = 0
    successes: int = 0
    latency_ms: float = 0.0
    last_success: float | None = None
    last_failure: float | None = None


class AvailabilityTracker(ABC):
    def __init__(self, *, prefix: str, window_seconds: int, bucket_seconds: int, clock: Clock = time.time) -> None:
        if window_seconds < 1 or bucket_seconds < 1:
            raise ValueError("availability window and bucket must be at least one second")
        self.prefix = f"{prefix}:avail"
        self.window_seconds = window_seconds
        self.bucket_seconds = bucket_seconds
        self.clock = clock

    def record_call(self, provider: str, method: str, result: ProviderResult, latency_ms: float) -> None:
        """Count one call made to the provider; answers we gave without calling are ignored."""
        outcome = call_outcome(result)
        if outcome != CallOutcome.NOT_CALLED:
            self._add(provider, method, outcome == CallOutcome.SUCCESS, max(latency_ms, 0.0), self.clock())

    def availability(self, provider: str, method: str) -> Availability:
        totals = self._totals(provider, method, self.clock())
        return Availability(
            provider=provider,
            method=method,
            window_seconds=self.window_seconds,
            calls=totals.calls,
            successes=totals.successes,
            avg_latency_ms=totals.latency_ms / totals.calls if totals.calls else None,
            last_success_at=_datetime(totals.last_success),
            last_failure_at=_datetime(totals.last_failure),
        )

    def all_availability(self) -> list[Availability]:
        return [self.availability(provider, method) for provider, method in sorted(self._series())]

    def _bucket(self, now: float) -> int:
        return math.floor(now / self.bucket_seconds) * self.bucket_seconds

    def _oldest_kept_bucket(self, now: float) -> int:
        """Buckets starting before this one lie wholly outside the window (now - window, now]."""
        return math.floor((now - self.window_seconds) / self.bucket_seconds) * self.bucket_seconds

    @abstractmethod
    def _add(self, provider: str, method: str, ok: bool, latency_ms: float, now: float) -> None: ...

    @abstractmethod
    def _totals(self, provider: str, method: str, now: float) -> _Totals: ...

    @abstractmethod
    def _series(self) -> set[tuple[str, str]]: ...

    @abstractmethod
    def bucket_starts(self, provider: str, method: str) -> list[int]:
        """The buckets still held, oldest first (to see pruning at work)."""


def _datetime(timestamp: float | None) -> datetime | None:
    return None if timestamp is None else datetime.fromtimestamp(timestamp, tz=UTC)


# KEYS: buckets (zset), counters (hash), last (hash), index (set).
# ARGV: now, bucket start, oldest kept bucket, ok (0/1), latency_ms, series member,
# ttl of the buckets, ttl of the last success/failure.
_ADD_LUA = """
local bucket = ARGV[2]
redis.call('ZADD', KEYS[1], bucket, bucket)
redis.call('HINCRBY', KEYS[2], bucket .. ':n', 1)
redis.call('HINCRBYFLOAT', KEYS[2], bucket .. ':ms', ARGV[5])
if ARGV[4] == '1' then
  redis.call('HINCRBY', KEYS[2], bucket .. ':ok', 1)
  redis.call('HSET', KEYS[3], 'success_at', ARGV[1])
else
  redis.call('HSET', KEYS[3], 'failure_at', ARGV[1])
end
for _, old in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', '(' .. ARGV[3])) do
  redis.call('HDEL', KEYS[2], old .. ':n', old .. ':ok', old .. ':ms')
end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', '(' .. ARGV[3])
redis.call('EXPIRE', KEYS[1], ARGV[7])
redis.call('EXPIRE', KEYS[2], ARGV[7])
redis.call('EXPIRE', KEYS[3], ARGV[8])
redis.call('SADD', KEYS[4], ARGV[6])
return 1
"""

# KEYS: buckets, counters, last. ARGV: oldest kept bucket, newest bucket.
# Returns calls, successes, latency sum, last success, last failure (numbers as strings).
_TOTALS_LUA = """
local calls, successes, latency = 0, 0, 0
for _, b in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], ARGV[1], ARGV[2])) do
  local v = redis.call('HMGET', KEYS[2], b .. ':n', b .. ':ok', b .. ':ms')
  calls = calls + tonumber(v[1] or '0')
  successes = successes + tonumber(v[2] or '0')
  latency = latency + tonumber(v[3] or '0')
end
local last = redis.call('HMGET', KEYS[3], 'success_at', 'failure_at')
return {tostring(calls), tostring(successes), tostring(latency), last[1] or '', last[2] or ''}
"""


class RedisAvailabilityTracker(AvailabilityTracker):
    def __init__(
        self, *, client: redis.Redis, prefix: str, window_seconds: int, bucket_seconds: int, clock: Clock = time.time
    ) -> None:
        super().__init__(prefix=prefix, window_seconds=window_seconds, bucket_seconds=bucket_seconds, clock=clock)
        self.client = client
        self._add_script = client.register_script(_ADD_LUA)
        self._totals_script = client.register_script(_TOTALS_LUA)

    def _keys(self, provider: str, method: str) -> list[str]:
        series = f"{self.prefix}:{provider}:{method}"
        return [f"{series}:buckets", f"{series}:counters", f"{series}:last"]

    def _add(self, provider: str, method: str, ok: bool, latency_ms: float, now: float) -> None:
        keys = [*self._keys(provider, method), f"{self.prefix}:index"]
        args = [repr(now), self._bucket(now), self._oldest_kept_bucket(now), int(ok), repr(latency_ms)]
        args += [f"{provider}:{method}", self.window_seconds + 2 * self.bucket_seconds, LAST_SEEN_TTL_SECONDS]
        try:
            self._add_script(keys=keys, args=args)
        except redis.RedisError:
            logger.warning(
                "availability of %s.%s: Redis unavailable, call not counted", provider, method, exc_info=True
            )

    def _totals(self, provider: str, method: str, now: float) -> _Totals:
        args = [self._oldest_kept_bucket(now), self._bucket(now)]
        calls, successes, latency, success_at, failure_at = (
            _text(value) for value in self._totals_script(keys=self._keys(provider, method), args=args)
        )
        return _Totals(
            calls=int(calls),
            successes=int(successes),
            latency_ms=float(latency),
            last_success=float(success_at) if success_at else None,
            last_failure=float(failure_at) if failure_at else None,
        )

    def _series(self) -> set[tuple[str, str]]:
        members = self.client.smembers(f"{self.prefix}:index")
        return {tuple(_text(member).split(":", 1)) for member in members}  # type: ignore[misc, union-attr]

    def bucket_starts(self, provider: str, method: str) -> list[int]:
        starts = self.client.zrange(self._keys(provider, method)[0], 0, -1)
        return [int(_text(start)) for start in starts]  # type: ignore[union-attr]


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


@dataclass
class _LocalSeries:
    buckets: dict[int, _Totals] = field(default_factory=dict)
    last_success: float | None = None
    last_failure: float | None = None


_LOCAL_LOCK = threading.Lock()
_LOCAL_SERIES: dict[tuple[str, str, str], _LocalSeries] = {}


class LocalAvailabilityTracker(AvailabilityTracker):
    """The same figures in this process's memory: each process has its own. Demo only."""

    def _add(self, provider: str, method: str, ok: bool, latency_ms: float, now: float) -> None:
        with _LOCAL_LOCK:
            series = _LOCAL_SERIES.setdefault((self.prefix, provider, method), _LocalSeries())
            bucket = series.buckets.setdefault(self._bucket(now), _Totals())
            bucket.calls += 1
            bucket.successes += int(ok)
            bucket.latency_ms += latency_ms
            if ok:
                series.last_success = now
            else:
                series.last_failure = now
            oldest = self._oldest_kept_bucket(now)
            series.buckets = {start: totals for start, totals in series.buckets.items() if start >= oldest}

    def _totals(self, provider: str, method: str, now: float) -> _Totals:
        oldest, newest = self._oldest_kept_bucket(now), self._bucket(now)
        with _LOCAL_LOCK:
            series = _LOCAL_SERIES.get((self.prefix, provider, method)) or _LocalSeries()
            kept = [totals for start, totals in series.buckets.items() if oldest <= start <= newest]
            return _Totals(
                calls=sum(totals.calls for totals in kept),
                successes=sum(totals.successes for totals in kept),
                latency_ms=sum(totals.latency_ms for totals in kept),
                last_success=series.last_success,
                last_failure=series.last_failure,
            )

    def _series(self) -> set[tuple[str, str]]:
        with _LOCAL_LOCK:
            return {(provider, method) for prefix, provider, method in _LOCAL_SERIES if prefix == self.prefix}

    def bucket_starts(self, provider: str, method: str) -> list[int]:
        with _LOCAL_LOCK:
            return sorted((_LOCAL_SERIES.get((self.prefix, provider, method)) or _LocalSeries()).buckets)


def tracker(*, clock: Clock = time.time) -> AvailabilityTracker:
    """The tracker for this deployment: Redis when REDIS_URL is set, else in-process."""
    prefix, client = state_key_prefix(), shared_redis()
    window = int(getattr(settings, "PROVIDER_AVAILABILITY_WINDOW_SECONDS", 300))
    bucket = int(getattr(settings, "PROVIDER_AVAILABILITY_BUCKET_SECONDS", 1))
    if client is None:
        return LocalAvailabilityTracker(prefix=prefix, window_seconds=window, bucket_seconds=bucket, clock=clock)
    return RedisAvailabilityTracker(
        client=client, prefix=prefix, window_seconds=window, bucket_seconds=bucket, clock=clock
    )


def record_call(provider: str, method: str, result: ProviderResult, latency_ms: float) -> None:
    tracker().record_call(provider, method, result, latency_ms)


def availability(provider: str, method: str) -> Availability:
    return tracker().availability(provider, method)


def all_availability() -> list[Availability]:
    return tracker().all_availability()
