"""POST /webhooks/<provider>/: the one way provider events come in."""

from django.http import HttpRequest, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST

from core.errors import AppError
from providers.webhooks import webhook_receive


@csrf_exempt
@require_POST
def webhook_view(request: HttpRequest, provider: str) -> JsonResponse:
    """Verify and store, then answer at once; processing happens in a Celery task."""
    try:
        event, stored = webhook_receive(provider=provider, body=request.body, headers=dict(request.headers))
    except AppError as error:
        return JsonResponse(error.as_body(), status=error.http_status)
    return JsonResponse({"received": True, "event_id": event.event_id, "duplicate": not stored})
