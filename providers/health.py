"""Provider health for staff and monitoring: the circuit breaker and recent availability of each provider.

Status per provider: UNHEALTHY while its circuit is open (routing skips it), DEGRADED while the circuit is
half-open, when any method's success rate over the availability window is below
PROVIDER_HEALTH_MIN_SUCCESS_RATE (0.9 by default), or when the figures cannot be read; HEALTHY otherwise.
The payments status is the worst provider status.

Reads never raise on a Redis outage: the breaker is reported as "unknown" with the error, because the
outage itself is what staff and monitoring need to see. Payments keep flowing meanwhile (the breaker
fails open), hence DEGRADED rather than UNHEALTHY.

A circuit opening raises the staff alert `circuit:<provider>` (`circuit_changed`, wired into every provider
call by providers.retry); it resolves itself when the circuit closes again, or when staff reset it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

import redis
from django.conf import settings
from django.contrib.auth.base_user import AbstractBaseUser
from django.db import transaction

from core.alerts import alert_raise, alert_resolve
from core.errors import AppError, InvalidRequest
from core.permissions import require_permission
from core.services import audit_record
from providers.availability import Availability, all_availability
from providers.breaker import BreakerState, CircuitBreaker, CircuitState, breaker_for
from providers.models import Provider

logger = logging.getLogger(__name__)

VIEW_PERMISSION = "providers.view_webhookevent"
RESET_PERMISSION = "providers.reset_circuit_breaker"
UNKNOWN_STATE = "unknown"  # breaker state when Redis cannot be read
DEFAULT_MIN_SUCCESS_RATE = 0.9


class HealthStatus(StrEnum):
    HEALTHY = "HEALTHY"
    DEGRADED = "DEGRADED"
    UNHEALTHY = "UNHEALTHY"


_SEVERITY = {HealthStatus.HEALTHY: 0, HealthStatus.DEGRADED: 1, HealthStatus.UNHEALTHY: 2}


class BreakerStoreUnavailable(AppError):
    """The shared breaker state (Redis) could not be read or changed."""

    code = "breaker_store_unavailable"
    http_status = 503
    retryable = True
    default_user_message = "The circuit breaker state could not be reached, so nothing was changed."
    default_action_required = "Check that Redis is up (see /api/health/redis), then try again."


@dataclass(frozen=True)
class MethodHealth:
    method: str
    calls: int
    successes: int
    success_rate: float | None  # None when there were no calls in the window
    avg_latency_ms: float | None
    last_success_at: datetime | None
    last_failure_at: datetime | None
    below_threshold: bool

    @property
    def success_percent(self) -> float | None:
        return None if self.success_rate is None else self.success_rate * 100


@dataclass(frozen=True)
class ProviderHealth:
    provider: str
    status: HealthStatus
    breaker_state: str  # a CircuitState value, or "unknown"
    failures: int | None  # consecutive failures; None when unknown
    opened_at: datetime | None
    retry_at: datetime | None
    breaker_error: str  # why the breaker state is unknown
    availability_window_seconds: int
    availability_error: str  # why the availability figures are missing
    methods: list[MethodHealth]


def min_success_rate() -> float:
    return float(getattr(settings, "PROVIDER_HEALTH_MIN_SUCCESS_RATE", DEFAULT_MIN_SUCCESS_RATE))


def provider_health() -> list[ProviderHealth]:
    """One entry per provider in `Provider`, in its order, with every method seen in the availability figures."""
    threshold = min_success_rate()
    window = int(getattr(settings, "PROVIDER_AVAILABILITY_WINDOW_SECONDS", 300))
    try:
        figures, availability_error = all_availability(), ""
    except redis.RedisError as error:
        figures, availability_error = [], _describe(error)
    return [
        _provider_health(
            provider,
            [figure for figure in figures if figure.provider == provider],
            threshold=threshold,
            window=window,
            availability_error=availability_error,
        )
        for provider in Provider.values
    ]


def overall_status(providers: list[ProviderHealth]) -> HealthStatus:
    """UNHEALTHY only when no provider can take payments (routing falls back around one
    that cannot); otherwise DEGRADED if any provider is, else HEALTHY."""
    statuses = [provider.status for provider in providers]
    if statuses and all(status == HealthStatus.UNHEALTHY for status in statuses):
        return HealthStatus.UNHEALTHY
    return HealthStatus.DEGRADED if any(s != HealthStatus.HEALTHY for s in statuses) else HealthStatus.HEALTHY


def _provider_health(
    provider: str, figures: list[Availability], *, threshold: float, window: int, availability_error: str
) -> ProviderHealth:
    methods = [_method_health(figure, threshold) for figure in figures]
    try:
        breaker: BreakerState | None = breaker_for(provider).state()
        breaker_error = ""
    except redis.RedisError as error:
        breaker, breaker_error = None, _describe(error)
    return ProviderHealth(
        provider=provider,
        status=_status(breaker, methods, availability_error),
        breaker_state=breaker.state.value if breaker else UNKNOWN_STATE,
        failures=breaker.failures if breaker else None,
        opened_at=breaker.opened_at if breaker else None,
        retry_at=breaker.retry_at if breaker else None,
        breaker_error=breaker_error,
        availability_window_seconds=window,
        availability_error=availability_error,
        methods=methods,
    )


def _method_health(figure: Availability, threshold: float) -> MethodHealth:
    rate = figure.success_rate
    return MethodHealth(
        method=figure.method,
        calls=figure.calls,
        successes=figure.successes,
        success_rate=rate,
        avg_latency_ms=figure.avg_latency_ms,
        last_success_at=figure.last_success_at,
        last_failure_at=figure.last_failure_at,
        below_threshold=rate is not None and rate < threshold,
    )


def _status(breaker: BreakerState | None, methods: list[MethodHealth], availability_error: str) -> HealthStatus:
    if breaker is not None and breaker.state == CircuitState.OPEN:
        return HealthStatus.UNHEALTHY
    if breaker is None or breaker.state == CircuitState.HALF_OPEN or availability_error:
        return HealthStatus.DEGRADED
    if any(method.below_threshold for method in methods):
        return HealthStatus.DEGRADED
    return HealthStatus.HEALTHY


def _describe(error: Exception) -> str:
    return f"{type(error).__name__}: {error}"


@transaction.atomic
def breaker_reset(*, provider: str, actor: AbstractBaseUser) -> BreakerState:
    """Close the provider's circuit and forget its history; audited. Returns the state it had before.

    The audit row is written first and the Redis change last, so a failed reset rolls the row back.
    """
    require_permission(actor, RESET_PERMISSION)
    if provider not in Provider.values:
        raise InvalidRequest(
            f"unknown provider {provider!r}",
            user_message=f"There is no provider called {provider!r}.",
            action_required="Pick a provider from the provider health page.",
            details={"provider": provider, "providers": list(Provider.values)},
        )
    breaker = breaker_for(provider)
    try:
        before = breaker.state()
    except redis.RedisError as error:
        raise BreakerStoreUnavailable(f"reading the {provider} breaker failed: {_describe(error)}") from error
    audit_record(
        actor=actor,
        action="providers.breaker.reset",
        before={"provider": provider, **_breaker_fields(before)},
        after={"provider": provider, "state": CircuitState.CLOSED.value, "failures": 0},
    )
    try:
        breaker.reset()
    except redis.RedisError as error:
        raise BreakerStoreUnavailable(f"resetting the {provider} breaker failed: {_describe(error)}") from error
    alert_resolve(key=circuit_alert_key(provider), reason=f"reset by {actor.get_username()}")
    return before


# --- the staff alert ------------------------------------------------------------------------------


def circuit_alert_key(name: str) -> str:
    return f"circuit:{name}"


def circuit_changed(breaker: CircuitBreaker, state: CircuitState) -> None:
    """The breaker's observer on the payment path: alert when a circuit opens, resolve when it closes.

    Never raises: the provider call that tripped the breaker has its own answer to give."""
    try:
        if state == CircuitState.CLOSED:
            alert_resolve(key=circuit_alert_key(breaker.name), reason="the circuit closed after successful trials")
        elif state == CircuitState.OPEN:
            _alert_circuit_open(breaker)
    except Exception:
        logger.exception("circuit breaker %s: the staff alert for %s could not be written", breaker.name, state)


def _alert_circuit_open(breaker: CircuitBreaker) -> None:
    name = breaker.name
    why = f"{breaker.config.failure_threshold} calls in a row to {name} failed or timed out"
    try:
        seen = breaker.state()
        retry = f"{seen.retry_at:%H:%M:%S} UTC" if seen.retry_at else "its backoff"
        if seen.times_opened > 1:
            why = f"A trial call to {name} failed again (opened {seen.times_opened} times in a row)"
    except redis.RedisError:
        retry = "its backoff"
    alert_raise(
        key=circuit_alert_key(name),
        title=f"{name}: provider calls are failing, its circuit breaker opened",
        detail=f"{why}. Calls are refused until {retry}, then trial calls probe it. New customer payments are "
        f"routed to other providers; payouts, refunds and look-ups at {name} wait and are synced later.",
        action_required=f"Check {name}'s status page and the provider health page (/admin/providers/health/). "
        "Reset the circuit there only once the provider answers again; the alert resolves when it closes.",
    )


def _breaker_fields(state: BreakerState) -> dict[str, object]:
    return {
        "state": state.state.value,
        "failures": state.failures,
        "times_opened": state.times_opened,
        "opened_at": state.opened_at.isoformat() if state.opened_at else None,
        "retry_at": state.retry_at.isoformat() if state.retry_at else None,
    }
