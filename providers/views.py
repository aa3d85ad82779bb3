"""POST /webhooks/<provider>/: the one way provider events come in."""

import threading
import time
from typing import Any

from django.conf import settings
from django.http import HttpRequest, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST
from django_ratelimit.core import get_usage

from core.errors import AppError, RateLimited
from providers.webhooks import webhook_receive

# Sources this process has seen over their rate of rejected requests: (provider, address) -> monotonic time their
# window ends. Only these are checked against the shared count before their body is read, so an accepted request
# from any other source never touches the cache; the count in the cache stays the one rule.
_suspected_until: dict[tuple[str, str], float] = {}
_suspected_lock = threading.Lock()
SUSPECTED_SOURCES_MAX = 10_000  # a bound on the memory; forgetting one costs a verification, never a check


@csrf_exempt
@require_POST
def webhook_view(request: HttpRequest, provider: str) -> JsonResponse:
    """Verify and store, then answer at once; processing happens in a Celery task. A source whose requests keep
    being rejected is refused (429) and nothing of it stored (django-ratelimit, shared cache); once this process
    has seen it over its rate it is refused before anything is read, until its window ends. An accepted request
    from any other source never touches the cache."""
    try:
        if _suspected(request, provider):
            _refuse_if_over_rate(request, provider)
        event, stored = webhook_receive(
            provider=provider,
            body=request.body,
            headers=dict(request.headers),
            admit_rejected=lambda: _admit_rejected(request, provider),
        )
    except RateLimited as error:
        return _too_many(error)
    except AppError as error:
        return JsonResponse(error.as_body(), status=error.http_status)
    return JsonResponse({"received": True, "event_id": event.event_id, "duplicate": not stored})


def _admit_rejected(request: HttpRequest, provider: str) -> None:
    """A rejected request is counted, or refused (RateLimited) when its source is over its rate already."""
    _refuse_if_over_rate(request, provider)
    _usage(request, provider, count=True)


def _refuse_if_over_rate(request: HttpRequest, provider: str) -> None:
    """RateLimited when this source is over its rate of rejected requests; remembers it for `_suspected`."""
    usage = _usage(request, provider, count=False)
    key = (provider, _source(request))
    with _suspected_lock:
        if usage is None or not usage["should_limit"]:
            _suspected_until.pop(key, None)
            return
        if len(_suspected_until) >= SUSPECTED_SOURCES_MAX:
            _suspected_until.clear()
        _suspected_until[key] = time.monotonic() + max(1, usage["time_left"])
    raise RateLimited(
        f"too many rejected {provider} webhook requests from one source",
        retry_after_seconds=60,
        user_message="Too many webhook requests from this source were rejected.",
        action_required="Check the sender's webhook secret; try again after Retry-After.",
    )


def _suspected(request: HttpRequest, provider: str) -> bool:
    with _suspected_lock:
        until = _suspected_until.get((provider, _source(request)))
    return until is not None and until > time.monotonic()


def _source(request: HttpRequest) -> str:
    return request.META.get("REMOTE_ADDR") or ""  # django-ratelimit's key="ip"


def _usage(request: HttpRequest, provider: str, *, count: bool) -> dict[str, Any] | None:
    return get_usage(
        request,
        group=f"webhooks.rejected.{provider}",
        key="ip",
        rate=settings.WEBHOOK_REJECTED_RATE,
        method="POST",
        increment=count,
    )


def _too_many(error: RateLimited) -> JsonResponse:
    response = JsonResponse(error.as_body(), status=error.http_status)
    response["Retry-After"] = str(error.retry_after_seconds)
    return response
