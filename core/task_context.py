"""Celery's side of the logs: the request id follows work into tasks, and workers and beat log as Django does.

- On publish (`before_task_publish`, in the process that queues the task) the request id bound there (a web
  request's, or the running task's) goes into the message headers as `request_id`.
- On the worker (`task_prerun`) the task runs bound to that id (core.context), so its log lines and audit rows
  carry the id of the request that queued it; `task_postrun` restores what was bound before. A task queued
  with no request around it (beat, a shell) gets an id of its own.
- In eager mode (the embedded demo, the tests) nothing is published: the task runs inside the caller, whose
  context is still bound, and an explicit `headers={"request_id": ...}` is read from `request.headers`.
- `setup_logging` has a receiver, so Celery leaves the root logger alone (no hijacking, no redirected stdout)
  and applies settings.LOGGING instead: a worker's lines are the same JSON as the web's (core.logging). A
  worker applies it at `celeryd_init` already, so the warnings it gives before setting up logging (Django's
  set-up captures warnings into logging) are JSON lines too.
"""

from __future__ import annotations

import threading
from contextlib import ExitStack
from typing import Any

from celery import signals

from core.context import RequestContext, bound_context, bound_request_id, new_request_id

HEADER = "request_id"

_bound: dict[str, list[ExitStack]] = {}  # task id -> the contexts its runs bound (eager runs may nest)
_bound_lock = threading.Lock()


def incoming_request_id(request: Any) -> str | None:
    """The request id a task's message carried: a header of the message (a worker puts custom headers on the
    request itself) or, for an eager call, in the headers it was given."""
    value = getattr(request, HEADER, None)
    if not value:
        headers = getattr(request, "headers", None)
        value = headers.get(HEADER) if isinstance(headers, dict) else None
    return value if isinstance(value, str) and value.isascii() and 0 < len(value) <= 64 else None


def request_id_to_headers(headers: dict[str, Any] | None = None, **_: Any) -> None:
    """before_task_publish: put the bound request id in the message headers (an explicit one is kept)."""
    request_id = bound_request_id()
    if headers is not None and request_id and not headers.get(HEADER):
        headers[HEADER] = request_id


def bind_task_request_id(task_id: str | None = None, task: Any = None, **_: Any) -> None:
    """task_prerun: bind the request id the task was queued with (else the caller's, else a new one)."""
    request_id = incoming_request_id(getattr(task, "request", None)) or bound_request_id() or new_request_id()
    stack = ExitStack()
    stack.enter_context(bound_context(RequestContext(request_id=request_id)))
    with _bound_lock:
        _bound.setdefault(task_id or "", []).append(stack)


def unbind_task_request_id(task_id: str | None = None, **_: Any) -> None:
    """task_postrun: give back the context bound before the task ran."""
    with _bound_lock:
        stacks = _bound.get(task_id or "")
        stack = stacks.pop() if stacks else None
        if stacks == []:
            del _bound[task_id or ""]
    if stack is not None:
        stack.close()


def configure_celery_logging(**_: Any) -> None:
    """setup_logging: settings.LOGGING, as Django applies it (Celery's own set-up is skipped)."""
    from django.conf import settings
    from django.utils.log import configure_logging

    configure_logging(settings.LOGGING_CONFIG, settings.LOGGING)


def connect_celery_signals() -> None:
    """Called once by config.celery, before any worker, beat or publisher starts."""
    signals.before_task_publish.connect(request_id_to_headers, weak=False, dispatch_uid="core.request_id.publish")
    signals.task_prerun.connect(bind_task_request_id, weak=False, dispatch_uid="core.request_id.prerun")
    signals.task_postrun.connect(unbind_task_request_id, weak=False, dispatch_uid="core.request_id.postrun")
    signals.setup_logging.connect(configure_celery_logging, weak=False, dispatch_uid="core.logging.celery")
    # Earlier still, for a worker's first words: its warning when run as root (a container's default user).
    signals.celeryd_init.connect(configure_celery_logging, weak=False, dispatch_uid="core.logging.celeryd_init")
