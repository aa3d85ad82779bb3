"""GET /metrics: Prometheus text format, for the monitoring system only.

Who may scrape: a client whose address (REMOTE_ADDR, never a forwarded header) is in METRICS_ALLOWED_IPS
(addresses or networks; loopback by default), or one that sends `Authorization: Bearer <METRICS_TOKEN>`.
Everyone else gets a 403 with the one error body. Behind a reverse proxy on the same host every request
comes from loopback: there, set METRICS_ALLOWED_IPS to the scraper's address only (or to nothing, and use
the token), or do not route /metrics through the proxy.

What it holds: django-prometheus's request metrics (its middleware pair), our counters (monitoring.metrics),
and gauges read at scrape time with small, indexed queries:
- `backoffice_payout_items_in_flight{status}`: items of payout batches still in flight (prepared to submitted),
  from the (batch, status) index; items of finished batches are final and no longer counted.
- `backoffice_provider_circuit_state{provider, state}`: 1 for each provider's current circuit state (closed,
  half_open, open, or unknown when Redis cannot be read), 0 for the others.
- `backoffice_open_alerts{severity, status}`: alerts not resolved (open or acknowledged).
- `backoffice_metrics_read_errors{part}`: 1 when a part above could not be read this time (it is left out).
"""

from __future__ import annotations

import hmac
import ipaddress
import os
from collections.abc import Iterable, Iterator
from functools import lru_cache
from typing import Any

import structlog
from django.conf import settings
from django.db.models import Count
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest, multiprocess
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from core.alerts import ACTIVE
from core.errors import PermissionDenied
from core.models import Alert
from monitoring.health import UNHEALTHY, check_redis
from payouts.models import PayoutBatch, PayoutItem
from providers.breaker import CircuitState, breaker_for
from providers.models import Provider

log = structlog.get_logger(__name__)

UNKNOWN = "unknown"


# --- who may scrape --------------------------------------------------------------------------------------------


@lru_cache(maxsize=8)
def _networks(allowed: tuple[str, ...]) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    return tuple(ipaddress.ip_network(entry.strip(), strict=False) for entry in allowed if entry.strip())


def address_allowed(address: str | None) -> bool:
    try:
        ip = ipaddress.ip_address(address or "")
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return any(ip in network for network in _networks(tuple(settings.METRICS_ALLOWED_IPS)))


def token_given(request: HttpRequest) -> bool:
    token = str(getattr(settings, "METRICS_TOKEN", "") or "")
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    return bool(token) and scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), token.encode())


def scrape_allowed(request: HttpRequest) -> bool:
    return token_given(request) or address_allowed(request.META.get("REMOTE_ADDR"))


# --- the gauges read at scrape time ----------------------------------------------------------------------------


class BusinessCollector(Collector):
    """Gauges computed when Prometheus scrapes: a part that cannot be read is left out and flagged."""

    def collect(self) -> Iterator[GaugeMetricFamily]:
        errors = GaugeMetricFamily(
            "backoffice_metrics_read_errors", "1 when a part of the scrape could not be read.", labels=["part"]
        )
        for part, read in (("payout_items", payout_items), ("circuits", circuits), ("alerts", open_alerts)):
            try:
                family = read()
            except Exception as error:  # a scrape must answer; the error gauge says what is missing
                log.warning("metrics.read_failed", part=part, error=f"{type(error).__name__}: {error}")
                errors.add_metric([part], 1)
                continue
            errors.add_metric([part], 0)
            yield family
        yield errors


def payout_items() -> GaugeMetricFamily:
    family = GaugeMetricFamily(
        "backoffice_payout_items_in_flight", "Items of payout batches in flight, by status.", labels=["status"]
    )
    in_flight = PayoutItem.objects.filter(batch__status__in=PayoutBatch.ACTIVE)
    counts = {row["status"]: row["count"] for row in in_flight.values("status").annotate(count=Count("pk"))}
    for status in PayoutItem.Status.values:
        family.add_metric([status], counts.get(status, 0))
    return family


def circuits() -> GaugeMetricFamily:
    family = GaugeMetricFamily(
        "backoffice_provider_circuit_state",
        "1 for the current circuit breaker state of each provider (unknown: Redis unreadable).",
        labels=["provider", "state"],
    )
    redis_down = check_redis().status == UNHEALTHY  # one PING, then nothing waits on a Redis that is down
    for provider in Provider.values:
        try:
            state = UNKNOWN if redis_down else breaker_for(provider).state().state.value
        except Exception:  # Redis went away meanwhile
            state = UNKNOWN
        for name in (*CircuitState, UNKNOWN):
            family.add_metric([provider, str(name)], 1 if str(name) == state else 0)
    return family


def open_alerts() -> GaugeMetricFamily:
    family = GaugeMetricFamily(
        "backoffice_open_alerts", "Alerts not resolved, by severity and status.", labels=["severity", "status"]
    )
    rows = Alert.objects.filter(status__in=ACTIVE).values("severity", "status").annotate(count=Count("pk"))
    counts = {(row["severity"], row["status"]): row["count"] for row in rows}
    for severity in Alert.Severity.values:
        for status in ACTIVE:
            family.add_metric([severity, status], counts.get((severity, status), 0))
    return family


# --- the view --------------------------------------------------------------------------------------------------


class _Scrape:
    """The collectors of one scrape, read in turn (generate_latest only calls collect())."""

    def __init__(self, *sources: Any) -> None:
        self.sources = sources

    def collect(self) -> Iterable[Any]:
        for source in self.sources:
            yield from source.collect()


def scrape() -> bytes:
    """Our process's registry, or every process's counts when PROMETHEUS_MULTIPROC_DIR is set; then the gauges."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        base = CollectorRegistry()
        multiprocess.MultiProcessCollector(base)  # type: ignore[no-untyped-call]
    else:
        base = REGISTRY
    return generate_latest(_Scrape(base, BusinessCollector()))  # type: ignore[arg-type]


@never_cache
@require_GET
def metrics_view(request: HttpRequest) -> HttpResponse:
    if not scrape_allowed(request):
        error = PermissionDenied(
            "metrics requested from an address not in METRICS_ALLOWED_IPS without the METRICS_TOKEN",
            user_message="Metrics are for the monitoring system only.",
            action_required="Scrape from an allowed address, or send Authorization: Bearer <METRICS_TOKEN>.",
        )
        return JsonResponse(error.as_body(), status=error.http_status)
    return HttpResponse(scrape(), content_type=CONTENT_TYPE_LATEST)
