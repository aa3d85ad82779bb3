"""Heartbeats that tell /api/health/celery whether workers and beat are alive, written to Redis (the broker).

- Worker: every worker writes its hostname and the time into a sorted set every HEARTBEAT_SECONDS, from a
  timer in its main process (`WorkerHeartbeat`, a bootstep), whatever its pool is busy with, and takes itself
  out when it stops cleanly. A worker killed outright just stops writing and ages out.
- Beat: the beat process stamps the time each time it has published a task (`after_task_publish`, only in the
  process where `beat_init` fired). Several jobs are due every minute, `monitoring.heartbeat` among them.
- Flow: `monitoring.heartbeat`, sent by beat every minute and run by any worker, stamps when it ran. Beat and
  workers alive but this stamp old means the queue is not moving (a backlog, a pool that is stuck).

Writes never raise: a heartbeat that cannot be written is exactly what the health check reports. Every key
lives under HEALTH_KEY_PREFIX and expires by itself.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import structlog
from celery import bootsteps, signals

log = structlog.get_logger(__name__)

HEARTBEAT_SECONDS = 15.0  # how often a worker writes
KEY_TTL_SECONDS = 24 * 3600  # heartbeats of machines gone for good are forgotten
BEAT_STAMP_EVERY_SECONDS = 5.0  # beat publishes bursts of tasks: one write per burst is enough
_state = {"in_beat": False, "beat_stamped_at": 0.0}


def key_prefix() -> str:
    from django.conf import settings

    return str(getattr(settings, "HEALTH_KEY_PREFIX", "bo:health"))


def _client() -> Any:
    """The shared Redis client (0.5 s timeouts, no retries), or None in the embedded mode."""
    from providers.breaker import shared_redis

    return shared_redis()


def _guarded_write(what: str, write: Any) -> None:
    try:
        client = _client()
        if client is not None:
            write(client, key_prefix())
    except Exception as error:  # a heartbeat must never break the worker or beat it runs in
        log.warning("heartbeat.write_failed", heartbeat=what, error=f"{type(error).__name__}: {error}")


# --- writes ----------------------------------------------------------------------------------------------------


def worker_heartbeat_write(hostname: str, *, now: float | None = None) -> None:
    def write(client: Any, prefix: str) -> None:
        at = time.time() if now is None else now
        key = f"{prefix}:workers"
        pipe = client.pipeline(transaction=False)
        pipe.zadd(key, {hostname: at})
        pipe.zremrangebyscore(key, "-inf", at - KEY_TTL_SECONDS)
        pipe.expire(key, KEY_TTL_SECONDS)
        pipe.execute()

    _guarded_write("worker", write)


def worker_heartbeat_forget(hostname: str) -> None:
    _guarded_write("worker", lambda client, prefix: client.zrem(f"{prefix}:workers", hostname))


def stamp_write(name: str, *, now: float | None = None) -> None:
    """Stamp `beat` or `flow` with the time."""
    at = time.time() if now is None else now
    _guarded_write(name, lambda client, prefix: client.set(f"{prefix}:{name}", repr(at), ex=KEY_TTL_SECONDS))


# --- the worker and beat ends ----------------------------------------------------------------------------------


class WorkerHeartbeat(bootsteps.StartStopStep):
    """A worker bootstep (config.celery adds it): the worker's heartbeat on the worker's own timer."""

    requires = {"celery.worker.components:Timer"}

    def __init__(self, worker: Any, **kwargs: Any) -> None:
        super().__init__(worker, **kwargs)
        self.timer_entry: Any = None

    def start(self, worker: Any) -> None:
        worker_heartbeat_write(worker.hostname)
        self.timer_entry = worker.timer.call_repeatedly(HEARTBEAT_SECONDS, worker_heartbeat_write, (worker.hostname,))

    def stop(self, worker: Any) -> None:
        if self.timer_entry is not None:
            self.timer_entry.cancel()
            self.timer_entry = None
        worker_heartbeat_forget(worker.hostname)


def _beat_started(**_: Any) -> None:
    _state["in_beat"] = True


def _published(**_: Any) -> None:
    now = time.time()
    if _state["in_beat"] and now - _state["beat_stamped_at"] >= BEAT_STAMP_EVERY_SECONDS:
        _state["beat_stamped_at"] = now
        stamp_write("beat", now=now)


def connect_heartbeats(app: Any) -> None:
    """Called once by config.celery: the worker bootstep and beat's signals."""
    app.steps["worker"].add(WorkerHeartbeat)
    signals.beat_init.connect(_beat_started, weak=False, dispatch_uid="monitoring.heartbeat.beat_init")
    signals.after_task_publish.connect(_published, weak=False, dispatch_uid="monitoring.heartbeat.published")


# --- reads (monitoring.health) ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Heartbeats:
    workers: dict[str, float]  # hostname -> last heartbeat (epoch seconds), newest first, at most 50
    beat_at: float | None
    flow_at: float | None


def heartbeats_read(client: Any, *, since: float) -> Heartbeats:
    """One round trip. Raises the client's errors: the caller reports them."""
    prefix = key_prefix()
    pipe = client.pipeline(transaction=False)
    pipe.zrevrangebyscore(f"{prefix}:workers", "+inf", since, start=0, num=50, withscores=True)
    pipe.get(f"{prefix}:beat")
    pipe.get(f"{prefix}:flow")
    workers, beat, flow = pipe.execute()
    return Heartbeats(
        workers={_text(name): float(score) for name, score in workers},
        beat_at=float(beat) if beat is not None else None,
        flow_at=float(flow) if flow is not None else None,
    )


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
