"""Hands stored webhook events to the Celery workers: one message for a burst of events, sent off the request's
path by one thread per process.

A web request stores its event (the row is the truth: DESIGN.md, Celery tasks are at-least-once nudges) and
puts its id here; the thread sends what has gathered within LINGER_SECONDS, up to BATCH_MAX ids a message, as
`providers.process_webhook_events`, whose worker claims and processes each event once (providers.webhooks).
An id lost with its process (killed before the thread sent it, or the broker down) stays `received`, and
`webhook_events_sweep` enqueues it again. Eager Celery (the embedded demo, the tests) runs the task in the caller.
"""

from __future__ import annotations

import atexit
import os
import queue
import threading
import time

import structlog
from django.conf import settings

log = structlog.get_logger(__name__)

BATCH_MAX = 100
LINGER_SECONDS = 0.01  # how long the first id of a burst waits for others to share its message

_pending: queue.SimpleQueue[int] = queue.SimpleQueue()
_sender_pid: int | None = None
_sender_lock = threading.Lock()


def webhook_events_publish(event_pks: list[int]) -> None:
    """Send processing messages for these events now, BATCH_MAX a message."""
    from providers.tasks import process_webhook_events_task

    for start in range(0, len(event_pks), BATCH_MAX):
        process_webhook_events_task.delay(event_pks[start : start + BATCH_MAX])


def webhook_event_enqueue(event_pk: int) -> None:
    """Queue one stored event for processing; returns at once (a message goes out within LINGER_SECONDS)."""
    if settings.CELERY_TASK_ALWAYS_EAGER:
        webhook_events_publish([event_pk])
        return
    _start_sender()
    _pending.put(event_pk)


def _start_sender() -> None:
    """One sender thread per process, started in the process that uses it (gunicorn forks its workers)."""
    global _sender_pid
    if _sender_pid == os.getpid():
        return
    with _sender_lock:
        if _sender_pid != os.getpid():
            threading.Thread(target=_send_forever, name="webhook-publisher", daemon=True).start()
            _sender_pid = os.getpid()


def _send_forever() -> None:
    while True:
        _send(_gathered())


def _gathered() -> list[int]:
    """The next burst: the first id waited for, then what else comes within LINGER_SECONDS, up to BATCH_MAX."""
    event_pks = [_pending.get()]
    deadline = time.monotonic() + LINGER_SECONDS
    while len(event_pks) < BATCH_MAX and (left := deadline - time.monotonic()) > 0:
        try:
            event_pks.append(_pending.get(timeout=left))
        except queue.Empty:
            break
    return event_pks


def _send(event_pks: list[int]) -> None:
    try:
        webhook_events_publish(event_pks)
    except Exception:  # the broker down, whatever kombu raises: the rows stay received and the sweeper has them
        log.exception("webhook.enqueue_failed", events=len(event_pks))


@atexit.register
def _send_pending() -> None:
    """On a clean exit (gunicorn's graceful stop), what is still waiting goes out before the process ends."""
    event_pks: list[int] = []
    while True:
        try:
            event_pks.append(_pending.get_nowait())
        except queue.Empty:
            break
    if event_pks:
        _send(event_pks)
