from collections.abc import Callable

from django.http import HttpRequest, HttpResponse

from core.context import RequestContext, bound_context, new_request_id

REQUEST_ID_HEADER = "X-Request-ID"


def _client_ip(request: HttpRequest) -> str | None:
    # Behind a proxy, configure it to set REMOTE_ADDR (e.g. gunicorn --forwarded-allow-ips).
    return request.META.get("REMOTE_ADDR") or None


class RequestContextMiddleware:
    """Gives every request an id (kept from X-Request-ID when sane) and binds it for logs and audit."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        incoming = request.headers.get(REQUEST_ID_HEADER, "")
        request_id = incoming if incoming.isascii() and 0 < len(incoming) <= 64 else new_request_id()
        context = RequestContext(
            request_id=request_id,
            ip=_client_ip(request),
            user_agent=request.headers.get("User-Agent", "")[:512],
        )
        with bound_context(context):
            request.request_id = request_id  # type: ignore[attr-defined]
            response = self.get_response(request)
        response[REQUEST_ID_HEADER] = request_id
        return response
