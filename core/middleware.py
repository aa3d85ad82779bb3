import re
from collections.abc import Callable

from django.core.exceptions import SuspiciousOperation
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


class ControlCharacterInURL(SuspiciousOperation):
    """A path or query string with control characters; Django's 400 handler (core.api.bad_request) answers it."""


_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")  # Unicode category Cc
_STRICT_PREFIXES = ("/api/", "/webhooks/")


class RefuseControlCharactersMiddleware:
    """Refuses a URL whose path or query string holds control characters before any view reads it: PostgreSQL can
    neither store nor compare NUL, so a look-up by `abc%00def` would otherwise be a server error. Under /api/ and
    /webhooks/ every control character is refused (no identifier or parameter there holds one); elsewhere (the
    admin's search box may be pasted into) only NUL."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        refused = _CONTROL.search if request.path.startswith(_STRICT_PREFIXES) else _nul
        texts = [request.path, *(text for name, values in request.GET.lists() for text in (name, *values))]
        if any(refused(text) for text in texts):
            raise ControlCharacterInURL("control character in the request path or query string")
        return self.get_response(request)


def _nul(text: str) -> bool:
    return "\x00" in text
