"""Health checks, one rule each, in one place: the /api/health endpoints and `manage.py diagnose` both use them.

Every check answers HEALTHY, DEGRADED or UNHEALTHY with reasons, never raises, and is bounded in time: Redis
calls time out after 0.5 s (providers.breaker.client_for_url: no retries), PostgreSQL connections after
DATABASE_CONNECT_TIMEOUT seconds, and once Redis is known to be down nothing else waits on it.

| check    | UNHEALTHY (503)                               | DEGRADED (200)                                     |
|----------|-----------------------------------------------|----------------------------------------------------|
| database | it does not answer `SELECT 1`                 | -                                                  |
| redis    | REDIS_URL is set and PING fails               | -  (no REDIS_URL, the embedded mode: HEALTHY)      |
| celery   | broker (Redis) down; no worker heartbeat for  | beat and workers alive but the every-minute        |
|          | HEALTH_CELERY_WORKER_STALE_SECONDS; beat has  | heartbeat task has not run for                     |
|          | published nothing for ..._BEAT_STALE_SECONDS  | ..._FLOW_STALE_SECONDS (a backlog, a stuck pool)   |
|          | (eager mode, the embedded demo: HEALTHY)      |                                                    |
| payments | every provider's circuit is open              | a circuit open or half-open, a method below        |
|          | (providers.health)                            | PROVIDER_HEALTH_MIN_SUCCESS_RATE, or provider      |
|          |                                               | state unreadable (Redis down: breakers fail open)  |
| overall  | the database is UNHEALTHY                     | any other check is not HEALTHY                     |

Why the overall answer is 503 only without a database: it is what a load balancer or orchestrator probes, and
PostgreSQL holds every money fact. Redis (Celery's broker, the shared cache with rate limits and PayPal
tokens, breakers and availability), the workers, beat and the providers are shared by every web process:
taking web processes out of service cannot bring them back, while recorded intents wait in PostgreSQL for the
sweeper. Their own endpoints answer 503 for monitoring to page on.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any
from urllib.parse import urlsplit

from django.conf import settings
from django.db import connection
from django.utils import timezone

from monitoring.heartbeat import KEY_TTL_SECONDS, heartbeats_read
from providers.breaker import client_for_url
from providers.health import UNKNOWN_STATE, HealthStatus, ProviderHealth, overall_status, provider_health
from providers.models import Provider

HEALTHY, DEGRADED, UNHEALTHY = HealthStatus.HEALTHY, HealthStatus.DEGRADED, HealthStatus.UNHEALTHY
_SEVERITY = {HEALTHY: 0, DEGRADED: 1, UNHEALTHY: 2}
REDIS_USERS = "Celery's broker, the shared cache (rate limits, PayPal tokens), circuit breakers and availability"


@dataclass
class CheckResult:
    name: str
    status: HealthStatus
    reasons: list[str] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)
    duration_ms: float = 0.0
    checked_at: str = field(default_factory=lambda: timezone.now().isoformat())

    @property
    def http_status(self) -> int:
        return 503 if self.status == UNHEALTHY else 200

    def body(self, *, staff: bool) -> dict[str, Any]:
        """The status for everyone; reasons and details for staff only (they name hosts and errors)."""
        if not staff:
            return {"status": self.status.value}
        return {
            "status": self.status.value,
            "reasons": self.reasons,
            "checked_at": self.checked_at,
            "duration_ms": round(self.duration_ms, 1),
            **self.details,
        }


def worst(statuses: list[HealthStatus]) -> HealthStatus:
    return max(statuses, key=_SEVERITY.__getitem__, default=HEALTHY)


def _timed(name: str, run: Callable[[], CheckResult]) -> CheckResult:
    """Run a check; one that raises (a bug, an unexpected driver error) is UNHEALTHY with the error as reason."""
    started = time.monotonic()
    try:
        result = run()
    except Exception as error:  # a health check answers, it never raises
        result = CheckResult(name, UNHEALTHY, [f"the check failed: {_describe(error)}"])
    result.duration_ms = (time.monotonic() - started) * 1000.0
    return result


def _describe(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}".strip()


def _setting(name: str, default: float) -> float:
    return float(getattr(settings, name, default))


# --- database --------------------------------------------------------------------------------------------------


def check_database() -> CheckResult:
    return _timed("database", _database)


def _database() -> CheckResult:
    vendor = connection.vendor
    try:
        connection.ensure_connection()
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
            cursor.fetchone()
    except Exception as error:  # DatabaseError, or a driver's own
        return CheckResult("database", UNHEALTHY, [f"unreachable: {_describe(error)}"], {"vendor": vendor})
    return CheckResult("database", HEALTHY, [], {"vendor": vendor})


# --- redis -----------------------------------------------------------------------------------------------------


def redis_location(url: str) -> str:
    """host:port/db, without credentials."""
    parts = urlsplit(url)
    return f"{parts.hostname}:{parts.port or 6379}{parts.path}"


def check_redis() -> CheckResult:
    return _timed("redis", _redis)


def _redis() -> CheckResult:
    url = settings.REDIS_URL
    if not url:
        return CheckResult("redis", HEALTHY, [], {"configured": False, "mode": "embedded (in-process)"})
    where = redis_location(url)
    try:
        client_for_url(url).ping()
    except Exception as error:  # RedisError, and OSError subclasses on some failures
        reason = f"unreachable at {where} ({_describe(error)}): {REDIS_USERS} are down"
        return CheckResult("redis", UNHEALTHY, [reason], {"configured": True, "url": where, "error": _describe(error)})
    return CheckResult("redis", HEALTHY, [], {"configured": True, "url": where})


def _redis_down(redis: CheckResult) -> bool:
    return bool(redis.details.get("configured")) and redis.status == UNHEALTHY


# --- celery ----------------------------------------------------------------------------------------------------


def check_celery(*, redis: CheckResult | None = None, now: float | None = None) -> CheckResult:
    return _timed("celery", lambda: _celery(redis, time.time() if now is None else now))


def _celery(redis: CheckResult | None, now: float) -> CheckResult:
    if getattr(settings, "CELERY_TASK_ALWAYS_EAGER", False) or not settings.REDIS_URL:
        return CheckResult("celery", HEALTHY, [], {"mode": "eager (tasks run in the calling process)"})
    redis = redis or check_redis()
    if _redis_down(redis):
        return CheckResult("celery", UNHEALTHY, ["the broker (Redis) is unreachable: no task is queued or run"])
    worker_stale = _setting("HEALTH_CELERY_WORKER_STALE_SECONDS", 60)
    beat_stale = _setting("HEALTH_CELERY_BEAT_STALE_SECONDS", 180)
    flow_stale = _setting("HEALTH_CELERY_FLOW_STALE_SECONDS", 300)
    try:
        beats = heartbeats_read(client_for_url(settings.REDIS_URL), since=now - KEY_TTL_SECONDS)
    except Exception as error:
        return CheckResult("celery", UNHEALTHY, [f"heartbeats unreadable: {_describe(error)}"])
    live = {host: now - at for host, at in beats.workers.items() if now - at <= worker_stale}
    beat_age = None if beats.beat_at is None else now - beats.beat_at
    flow_age = None if beats.flow_at is None else now - beats.flow_at
    gone = {host: now - at for host, at in beats.workers.items() if host not in live}
    details = {
        "mode": "broker",
        "workers": [{"hostname": host, "seen_seconds_ago": round(age, 1)} for host, age in live.items()],
        "workers_gone": [{"hostname": host, "seen_seconds_ago": round(age, 1)} for host, age in gone.items()][:10],
        "beat_seen_seconds_ago": _rounded(beat_age),
        "heartbeat_task_ran_seconds_ago": _rounded(flow_age),
    }
    reasons: list[str] = []
    status = HEALTHY
    if not live:
        last = f"last seen {min(now - at for at in beats.workers.values()):.0f} s ago" if beats.workers else "never"
        reasons.append(f"no worker heartbeat in the last {worker_stale:.0f} s ({last}): queued tasks are not run")
        status = UNHEALTHY
    if beat_age is None or beat_age > beat_stale:
        seen = "never" if beat_age is None else f"{beat_age:.0f} s ago"
        reasons.append(f"beat has published nothing for over {beat_stale:.0f} s (last {seen}): scheduled jobs stop")
        status = UNHEALTHY
    if status == HEALTHY and (flow_age is None or flow_age > flow_stale):
        ran = "never" if flow_age is None else f"{flow_age:.0f} s ago"
        reasons.append(f"the every-minute heartbeat task has not run for {flow_stale:.0f} s (last {ran}): tasks wait")
        status = DEGRADED
    return CheckResult("celery", status, reasons, details)


def _rounded(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds, 1)


# --- payments --------------------------------------------------------------------------------------------------


def check_payments(*, redis: CheckResult | None = None) -> CheckResult:
    return _timed("payments", lambda: _payments(redis))


def _payments(redis: CheckResult | None) -> CheckResult:
    redis = redis or check_redis()
    providers = _providers_unreadable(redis) if _redis_down(redis) else provider_health()
    status = overall_status(providers)
    reasons = [reason for provider in providers for reason in _provider_reasons(provider)]
    if _redis_down(redis):
        reasons = ["circuit breakers and availability are unreadable (Redis is down): payments are sent without "
                   "breaker protection (they fail open)"]  # fmt: skip
    return CheckResult("payments", status, reasons, {"providers": [asdict(provider) for provider in providers]})


def _providers_unreadable(redis: CheckResult) -> list[ProviderHealth]:
    """Every provider as providers.health shows it when Redis cannot be read, without asking Redis again."""
    error = str(redis.details.get("error", "Redis unreachable"))
    window = int(getattr(settings, "PROVIDER_AVAILABILITY_WINDOW_SECONDS", 300))
    return [
        ProviderHealth(
            provider=provider,
            status=DEGRADED,
            breaker_state=UNKNOWN_STATE,
            failures=None,
            opened_at=None,
            retry_at=None,
            breaker_error=error,
            availability_window_seconds=window,
            availability_error=error,
            methods=[],
        )
        for provider in Provider.values
    ]


def _provider_reasons(provider: ProviderHealth) -> list[str]:
    name = provider.provider
    if provider.breaker_state == "open":
        until = f" until {provider.retry_at:%H:%M:%S} UTC" if provider.retry_at else ""
        return [f"{name}: circuit open{until} after {provider.failures} failures; routing skips it"]
    reasons = []
    if provider.breaker_state == "half_open":
        reasons.append(f"{name}: circuit half-open, trial calls probe it")
    if provider.breaker_error:
        reasons.append(f"{name}: breaker state unreadable ({provider.breaker_error})")
    if provider.availability_error:
        reasons.append(f"{name}: availability figures unreadable ({provider.availability_error})")
    for method in provider.methods:
        if method.below_threshold and method.success_percent is not None:
            reasons.append(f"{name} {method.method}: {method.success_percent:.0f}% of {method.calls} calls succeeded")
    return reasons


# --- all of them -----------------------------------------------------------------------------------------------


def check_overall() -> CheckResult:
    started = time.monotonic()
    redis = check_redis()
    checks = [check_database(), redis, check_celery(redis=redis), check_payments(redis=redis)]
    if checks[0].status == UNHEALTHY:
        status = UNHEALTHY  # no database: nothing can be served
    else:
        status = DEGRADED if worst([check.status for check in checks]) != HEALTHY else HEALTHY
    reasons = [f"{check.name}: {reason}" for check in checks for reason in check.reasons]
    result = CheckResult("overall", status, reasons, {"checks": {c.name: c.body(staff=True) for c in checks}})
    result.duration_ms = (time.monotonic() - started) * 1000.0
    return result


CHECKS: dict[str, Callable[[], CheckResult]] = {
    "overall": check_overall,
    "database": check_database,
    "redis": check_redis,
    "celery": check_celery,
    "payments": check_payments,
}
