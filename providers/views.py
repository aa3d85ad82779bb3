"""POST /webhooks/<provider>/: the one way provider events come in."""

from django.conf import settings
from django.http import HttpRequest, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST
from django_ratelimit.core import get_usage

from core.errors import AppError, RateLimited
from providers.webhooks import webhook_receive


@csrf_exempt
@require_POST
def webhook_view(request: HttpRequest, provider: str) -> JsonResponse:
    """Verify and store, then answer at once; processing happens in a Celery task. A source whose requests
    keep being rejected is refused (429) before anything is read or stored."""
    if _rejections(request, provider, count=False):
        return _too_many(provider)
    try:
        event, stored = webhook_receive(provider=provider, body=request.body, headers=dict(request.headers))
    except AppError as error:
        if error.http_status == 400:
            _rejections(request, provider, count=True)
        return JsonResponse(error.as_body(), status=error.http_status)
    return JsonResponse({"received": True, "event_id": event.event_id, "duplicate": not stored})


def _rejections(request: HttpRequest, provider: str, *, count: bool) -> bool:
    """True when this source is over its rate of rejected webhook requests (django-ratelimit, shared cache)."""
    usage = get_usage(
        request,
        group=f"webhooks.rejected.{provider}",
        key="ip",
        rate=settings.WEBHOOK_REJECTED_RATE,
        method="POST",
        increment=count,
    )
    return usage is not None and usage["should_limit"]


def _too_many(provider: str) -> JsonResponse:
    error = RateLimited(
        f"too many rejected {provider} webhook requests from one source",
        retry_after_seconds=60,
        user_message="Too many webhook requests from this source were rejected.",
        action_required="Check the sender's webhook secret; try again after Retry-After.",
    )
    response = JsonResponse(error.as_body(), status=error.http_status)
    response["Retry-After"] = "60"
    return response
