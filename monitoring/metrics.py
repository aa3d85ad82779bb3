"""Business metrics counted where things happen: one call from the code that knows, nothing else here.

- `backoffice_money_movements_total{operation, provider, outcome}`: outcomes the protocol records
  (providers.protocol.engine): succeeded, declined, waiting (accepted, pending at the provider) and unknown
  (sent, outcome not known). Counted after the recording transaction commits, so a rolled-back (retried)
  recording is not counted twice.
- `backoffice_provider_call_seconds{provider, method, outcome}`: every call made to a provider
  (providers.retry), outcome as the circuit breaker counts it (success or failure); answers we gave without
  calling (an open circuit) are not calls.

The gauges read at scrape time (items, circuits, alerts) and the /metrics view are in monitoring.views_metrics.
With PROMETHEUS_MULTIPROC_DIR set (before start), every process (gunicorn workers, Celery workers) writes its
counts to files there and /metrics sums them: see docs/observability.md.
"""

from __future__ import annotations

from django.db import transaction
from prometheus_client import Counter, Histogram

from providers.base import ProviderResult
from providers.breaker import CallOutcome, call_outcome

MONEY_MOVEMENTS = Counter(
    "backoffice_money_movements",
    "Money movement outcomes recorded by the protocol, by operation, provider and outcome.",
    ["operation", "provider", "outcome"],
)
PROVIDER_CALL_SECONDS = Histogram(
    "backoffice_provider_call_seconds",
    "Latency of calls made to a provider, by provider, method and outcome (success or failure).",
    ["provider", "method", "outcome"],
    buckets=(0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
)


def movement_outcome_counted(*, operation: str, provider: str, outcome: str) -> None:
    """Count a recorded outcome once its transaction commits (at once outside of one)."""
    counter = MONEY_MOVEMENTS.labels(operation=operation, provider=provider, outcome=outcome)
    transaction.on_commit(counter.inc)


def provider_call_observed(provider: str, method: str, result: ProviderResult, latency_ms: float) -> None:
    outcome = call_outcome(result)
    if outcome != CallOutcome.NOT_CALLED:
        labels = {"provider": provider, "method": method, "outcome": outcome.value}
        PROVIDER_CALL_SECONDS.labels(**labels).observe(max(latency_ms, 0.0) / 1000.0)
