"""Who is acting and from where, for the audit log and the logs.

The middleware fills this for web requests; tasks and commands run with the
defaults (no IP, a generated request id) unless they set it themselves.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass

import structlog


@dataclass(frozen=True)
class RequestContext:
    request_id: str
    ip: str | None = None
    user_agent: str = ""


_current: ContextVar[RequestContext | None] = ContextVar("request_context", default=None)


def new_request_id() -> str:
    return uuid.uuid4().hex


def bound_request_id() -> str | None:
    """The id of the request (or task) being served, or None outside of one: never a made-up id."""
    context = _current.get()
    return context.request_id if context is not None else None


def current_context() -> RequestContext:
    return _current.get() or RequestContext(request_id=new_request_id())


@contextmanager
def bound_context(context: RequestContext) -> Iterator[RequestContext]:
    token = _current.set(context)
    with structlog.contextvars.bound_contextvars(request_id=context.request_id):
        try:
            yield context
        finally:
            _current.reset(token)
