"""DRF plumbing: the one error body, Idempotency-Key handling for POSTs, and the schema pieces views share."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

import structlog
from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.views import defaults
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse
from rest_framework import exceptions as drf_exceptions
from rest_framework import serializers
from rest_framework.pagination import LimitOffsetPagination
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from core.errors import AppError, InvalidRequest
from core.money import amount_max_minor_any
from core.services import (
    IdempotencyClaim,
    IdempotencyReplay,
    idempotency_begin,
    idempotency_complete,
    idempotency_release,
)

log = structlog.get_logger(__name__)

IDEMPOTENCY_KEY_HEADER = OpenApiParameter(
    "Idempotency-Key",
    str,
    OpenApiParameter.HEADER,
    required=True,
    description="Unique per request; a repeat within 24 h replays the first response.",
)


class MinorUnitsField(serializers.IntegerField):
    """An amount in minor units: a JSON integer only; 12.0, "12" and true are refused (never floats). At most
    the largest amount of any currency (core.money): the currency's own maximum is checked with the currency."""

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("max_value", amount_max_minor_any())
        super().__init__(**kwargs)

    def to_internal_value(self, data: Any) -> int:
        if type(data) is not int:
            self.fail("invalid")
        return super().to_internal_value(data)


class BoundedPagination(LimitOffsetPagination):
    """limit/offset pages with bounds: each a plain whole number up to a billion when given (`offset=null`,
    `limit=-1` or `limit=10**30` is a 400, never a 500); a page holds at most 500 rows."""

    max_limit = 500
    max_offset = 1_000_000_000

    def get_limit(self, request: Any) -> int | None:
        given = _page_number(request, self.limit_query_param, self.max_offset)  # a larger page is capped
        return self.default_limit if given is None else min(max(given, 1), self.max_limit)

    def get_offset(self, request: Any) -> int:
        given = _page_number(request, self.offset_query_param, self.max_offset)
        return given or 0


def _page_number(request: Any, name: str, largest: int) -> int | None:
    text = request.query_params.get(name)
    if text is None:
        return None
    if not (text.isascii() and text.isdigit()) or int(text) > largest:
        raise InvalidRequest(
            f"{name}={text[:40]!r} is not a whole number from 0 to {largest}",
            user_message=f"The page parameter {name!r} is not valid.",
            action_required=f"Send {name} as a whole number from 0 to {largest}, or leave it out.",
            details={name: text[:40]},
        )
    return int(text)


def error_responses(texts: Mapping[int, str], *codes: int) -> dict[int, OpenApiResponse]:
    """Schema entries for the error statuses a view can answer, each with the one error body."""
    return {code: OpenApiResponse(ErrorSerializer, description=texts[code]) for code in codes}


_DRF_USER_MESSAGES = {
    401: ("You are not signed in.", "Sign in, or send a valid API token, and try again."),
    403: ("You do not have permission to do this.", "Ask an administrator for access."),
    404: ("The item was not found.", "Check the identifier; it may belong to another user or not exist."),
    405: ("This action is not available here.", "Use one of the methods listed in the Allow header."),
    406: ("The requested response format is not available.", "Ask for application/json."),
    415: ("The request body format is not supported.", "Send the body as application/json."),
    429: ("Too many requests in a short time.", "Wait for the time given in Retry-After, then try again."),
}


def _body(code: str, message: str, user_message: str, action: str, retryable: bool, details: Any) -> dict:
    return {
        "error": {
            "code": code,
            "message": message,
            "user_message": user_message,
            "action_required": action,
            "retryable": retryable,
            "details": details,
        }
    }


def _from_drf(exc: drf_exceptions.APIException) -> Response:
    status = exc.status_code
    if isinstance(exc, drf_exceptions.ValidationError | drf_exceptions.ParseError):
        app_error = InvalidRequest(
            "request validation failed",
            details={"fields": exc.detail} if isinstance(exc.detail, dict | list) else {"detail": exc.detail},
        )
        return Response(app_error.as_body(), status=400)
    user_message, action = _DRF_USER_MESSAGES.get(status, ("The request could not be completed.", "Try again."))
    response = Response(
        _body(exc.default_code, str(exc.detail), user_message, action, status == 429, {}), status=status
    )
    if isinstance(exc, drf_exceptions.Throttled) and exc.wait is not None:
        response["Retry-After"] = str(int(exc.wait) + 1)
    return response


def exception_handler(exc: Exception, context: dict[str, Any]) -> Response:
    """Render every error raised in an API view as the one error body."""
    if isinstance(exc, AppError):
        response = Response(exc.as_body(), status=exc.http_status)
        retry_after = getattr(exc, "retry_after_seconds", None)
        if retry_after is not None:
            response["Retry-After"] = str(retry_after)
        return response
    if isinstance(exc, Http404):
        exc = drf_exceptions.NotFound()
    elif isinstance(exc, DjangoPermissionDenied):
        exc = drf_exceptions.PermissionDenied()
    if isinstance(exc, drf_exceptions.APIException):
        response = _from_drf(exc)
        auth_header = getattr(context.get("view"), "get_authenticate_header", None)
        if response.status_code == 401 and auth_header is not None:
            header = auth_header(context["request"])
            if header:
                response["WWW-Authenticate"] = header
        return response
    log.exception("api.unhandled_error", error=repr(exc))
    return Response(
        _body(
            "internal_error",
            "unexpected server error",
            "Something went wrong on our side and the request may not have completed.",
            "Retry with the same Idempotency-Key; if it keeps failing, contact support with the request id.",
            True,
            {},
        ),
        status=500,
    )


class ErrorDetailSerializer(serializers.Serializer):
    code = serializers.CharField()
    message = serializers.CharField()
    user_message = serializers.CharField()
    action_required = serializers.CharField()
    retryable = serializers.BooleanField()
    details = serializers.DictField()


class ErrorSerializer(serializers.Serializer):
    """The one error body every endpoint returns."""

    error = ErrorDetailSerializer()


def not_found(request: HttpRequest, exception: Exception) -> HttpResponse:
    """Django's 404 handler: the one error body under /api/, the usual page elsewhere."""
    if request.path.startswith("/api/"):
        user_message, action = _DRF_USER_MESSAGES[404]
        return JsonResponse(
            _body("not_found", f"no API endpoint at {request.path}", user_message, action, False, {}), status=404
        )
    return defaults.page_not_found(request, exception)


# --- Idempotency-Key ---------------------------------------------------------


class _ReplayStoredResponse(Exception):
    def __init__(self, replay: IdempotencyReplay) -> None:
        self.replay = replay


def request_fingerprint(request: Request) -> str:
    canonical = json.dumps(request.data, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(f"{request.method}\n{request.path}\n{canonical}".encode()).hexdigest()


def _is_final(response: Response) -> bool:
    """A response the client should get again on replay (success or a non-retryable error)."""
    if response.status_code >= 500:
        return False
    error = response.data.get("error") if isinstance(response.data, dict) else None
    return not (isinstance(error, dict) and error.get("retryable"))


class IdempotentMixin(APIView):
    """Requires an Idempotency-Key on POST and gives Stripe's semantics.

    Same key and same body: the stored response is replayed (header
    `Idempotent-Replayed: true`). Same key, other body: 422. Still running: 409.
    Retryable failures are not stored, so the client may retry with the same key.
    """

    idempotency_claim: IdempotencyClaim | None = None

    def initial(self, request: Request, *args: Any, **kwargs: Any) -> None:
        super().initial(request, *args, **kwargs)
        if request.method != "POST":
            return
        key = request.headers.get("Idempotency-Key", "")
        if not key or len(key) > 255 or not key.isascii() or not key.isprintable():
            raise InvalidRequest(
                "Idempotency-Key header missing or malformed",
                user_message="This request needs an idempotency key so it can never be applied twice.",
                action_required="Send a unique Idempotency-Key header (up to 255 printable ASCII characters).",
            )
        outcome = idempotency_begin(
            user=request.user,
            key=key,
            method=request.method,
            path=request.path,
            request_hash=request_fingerprint(request),
        )
        if isinstance(outcome, IdempotencyReplay):
            raise _ReplayStoredResponse(outcome)
        self.idempotency_claim = outcome

    def handle_exception(self, exc: Exception) -> Response:
        if isinstance(exc, _ReplayStoredResponse):
            return Response(exc.replay.body, status=exc.replay.status, headers={"Idempotent-Replayed": "true"})
        return super().handle_exception(exc)

    def finalize_response(self, request: Request, response: Response, *args: Any, **kwargs: Any) -> Response:
        response = super().finalize_response(request, response, *args, **kwargs)
        claim, self.idempotency_claim = self.idempotency_claim, None
        if claim is not None:
            if _is_final(response):
                idempotency_complete(claim=claim, status=response.status_code, body=response.data)
            else:
                idempotency_release(claim=claim)
        return response
