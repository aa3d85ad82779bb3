"""DRF plumbing: the one error body, Idempotency-Key handling for POSTs, and the schema pieces views share."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import structlog
from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.core.exceptions import RequestDataTooBig, SuspiciousOperation
from django.db import models
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.views import defaults
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse
from rest_framework import exceptions as drf_exceptions
from rest_framework import serializers
from rest_framework.pagination import LimitOffsetPagination
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.settings import api_settings
from rest_framework.utils import html
from rest_framework.views import APIView

from core.errors import AppError, InvalidRequest, NotFound
from core.middleware import ControlCharacterInURL
from core.models import IdempotencyKey
from core.money import CURRENCY_EXPONENTS, amount_max_minor_any
from core.parsers import body_too_large
from core.services import (
    IdempotencyClaim,
    IdempotencyReplay,
    idempotency_begin,
    idempotency_complete,
    idempotency_release,
)

log = structlog.get_logger(__name__)

IDEMPOTENCY_KEY_PATTERN = r"^[!-~]{1,255}$"  # 1 to 255 visible ASCII characters, no spaces: a UUID fits
IDEMPOTENCY_KEY_HEADER = OpenApiParameter(
    "Idempotency-Key",
    {"type": "string", "minLength": 1, "maxLength": 255, "pattern": IDEMPOTENCY_KEY_PATTERN},
    OpenApiParameter.HEADER,
    required=True,
    description="Unique per request (1 to 255 visible ASCII characters, no spaces; a UUID fits). A repeat "
    "within 24 h replays the first response; the same key with another body is a 422.",
)


class CurrencyField(serializers.ChoiceField):
    """A currency we handle, as its upper-case ISO 4217 code ("USD"): the schema lists them all."""

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("help_text", "ISO 4217 code in upper case, e.g. USD.")
        super().__init__(choices=sorted(CURRENCY_EXPONENTS), **kwargs)


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


def column_text(
    model: type[models.Model],
    field_name: str,
    field_class: type[serializers.CharField] = serializers.CharField,
    **kwargs: Any,
) -> serializers.CharField:
    """A text input that fits the database column it ends up in: its max_length is the model field's, so the limit
    is written once, on the model, and overlong text is a 400 before any row is written (never a DataError)."""
    kwargs.setdefault("max_length", model._meta.get_field(field_name).max_length)
    return field_class(**kwargs)


# Any date or time a client sends lies in these years: the ends of the calendar (year 1, year 9999) can never
# overflow the arithmetic done on them later (a deadline plus its grace, a statement's default window).
EARLIEST_DATETIME = datetime(1970, 1, 1, tzinfo=UTC)
LATEST_DATETIME = datetime(9000, 1, 1, tzinfo=UTC)


class BoundedDateTimeField(serializers.DateTimeField):
    """An ISO 8601 date and time with a zone, from 1970 to the year 8999; anything else (year 1, year 9999 or
    10000, an offset that overflows, "" or null where not allowed) is a 400 saying what to send."""

    default_error_messages = {
        "invalid": "Not a date and time: give one in ISO 8601 with a time zone, e.g. 2026-05-01T12:00:00Z.",
        "overflow": "The date and time is out of range: give one from 1970-01-01 to 8999-12-31 (UTC).",
        "out_of_range": "The date and time is out of range: give one from 1970-01-01 to 8999-12-31 (UTC).",
    }

    def get_value(self, dictionary: Any) -> Any:
        if html.is_html_input(dictionary) and dictionary.get(self.field_name) == "":
            return ""  # `?since=` is a mistake to point out (400), not "not given" as DRF would read it
        return super().get_value(dictionary)

    def to_internal_value(self, value: Any) -> datetime:
        parsed = super().to_internal_value(value)
        if not EARLIEST_DATETIME <= parsed < LATEST_DATETIME:
            self.fail("out_of_range")
        return parsed


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

    def get_schema_operation_parameters(self, view: Any) -> list[dict[str, Any]]:
        parameters = super().get_schema_operation_parameters(view)
        for parameter in parameters:  # a limit over max_limit is served as max_limit rows
            parameter["schema"] |= {"minimum": 0, "maximum": self.max_offset}
        return parameters


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


def _storable(value: Any) -> Any:
    """An error body with NUL shown escaped: error messages echo client input, an idempotent POST's answer is
    stored for replays, and PostgreSQL cannot store NUL in text (nor jsonb)."""
    if isinstance(value, str):
        return value.replace("\x00", "\\x00")
    if isinstance(value, dict):
        return {_storable(name): _storable(item) for name, item in value.items()}
    if isinstance(value, list | tuple):
        return [_storable(item) for item in value]
    return value


def _invalid_fields(detail: Any) -> str:
    """What is wrong, field by field ("deadline: ..."), for the person reading user_message."""
    if not isinstance(detail, dict):
        return ""
    named = []
    for name, problems in list(detail.items())[:5]:
        first = problems[0] if isinstance(problems, list) and problems else problems
        text = str(first).rstrip(".") if isinstance(first, str) else "not valid"
        named.append(text if name == api_settings.NON_FIELD_ERRORS_KEY else f"{name}: {text}")
    return "; ".join(named)[:500]


def _from_drf(exc: drf_exceptions.APIException) -> Response:
    status = exc.status_code
    if isinstance(exc, drf_exceptions.ValidationError | drf_exceptions.ParseError):
        invalid = _invalid_fields(exc.detail)
        details = {"fields": exc.detail} if isinstance(exc.detail, dict | list) else {"detail": exc.detail}
        if isinstance(exc, drf_exceptions.ParseError):
            app_error = InvalidRequest(
                "request body could not be parsed",
                user_message="The request body could not be read.",
                action_required="Send the body as a JSON object with the fields this endpoint documents.",
                details=details,
            )
        else:
            user_message = f"Some of the information given is not valid: {invalid}." if invalid else None
            app_error = InvalidRequest("request validation failed", user_message=user_message, details=details)
        return Response(_storable(app_error.as_body()), status=400)
    user_message, action = _DRF_USER_MESSAGES.get(status, ("The request could not be completed.", "Try again."))
    response = Response(
        _body(exc.default_code, str(exc.detail), user_message, action, status == 429, {}), status=status
    )
    if isinstance(exc, drf_exceptions.Throttled) and exc.wait is not None:
        response["Retry-After"] = str(int(exc.wait) + 1)
    return response


def exception_handler(exc: Exception, context: dict[str, Any]) -> Response:
    """Render every error raised in an API view as the one error body."""
    if isinstance(exc, SuspiciousOperation):  # Django refusing the request itself, e.g. a body over the limit
        exc = _django_error(exc)
    if isinstance(exc, AppError):
        response = Response(_storable(exc.as_body()), status=exc.http_status)
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


_ERROR_BODY_PATHS = ("/api/", "/webhooks/")  # where even Django's own refusals answer in the one error body


def not_found(request: HttpRequest, exception: Exception) -> HttpResponse:
    """Django's 404 handler: the one error body under /api/ and /webhooks/, the usual page elsewhere."""
    if request.path.startswith(_ERROR_BODY_PATHS):
        user_message, action = _DRF_USER_MESSAGES[404]
        message = f"no endpoint at {request.path[:200]}"
        return JsonResponse(_storable(_body("not_found", message, user_message, action, False, {})), status=404)
    return defaults.page_not_found(request, exception)


def _django_error(exc: Exception) -> AppError:
    """Django's refusals of a request (SuspiciousOperation) as the error they are for the client."""
    if isinstance(exc, RequestDataTooBig):
        return body_too_large()
    if isinstance(exc, ControlCharacterInURL):
        return InvalidRequest(
            str(exc),
            user_message="The address contains control characters (such as NUL), which no identifier here holds.",
            action_required="Remove them from the path and the query string, and send the request again.",
        )
    return InvalidRequest(
        f"request refused: {type(exc).__name__}",
        user_message="The request was refused as malformed.",
        action_required="Check the address, the headers and the body, and send the request again.",
    )


def bad_request(request: HttpRequest, exception: Exception) -> HttpResponse:
    """Django's 400 handler (a SuspiciousOperation: a body over DATA_UPLOAD_MAX_MEMORY_SIZE, a URL with control
    characters, ...): the one error body under /api/ and /webhooks/ (413 for a body too large), the usual page
    elsewhere."""
    if request.path.startswith(_ERROR_BODY_PATHS):
        error = _django_error(exception)
        return JsonResponse(_storable(error.as_body()), status=error.http_status)
    return defaults.bad_request(request, exception)


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
        if len(request.path) > IdempotencyKey._meta.get_field("path").max_length:  # no id of ours is that long
            raise NotFound(f"no endpoint at {request.path[:200]}... ({len(request.path)} characters)")
        key = request.headers.get("Idempotency-Key", "")
        if not re.fullmatch(IDEMPOTENCY_KEY_PATTERN, key):
            raise InvalidRequest(
                "Idempotency-Key header missing or malformed",
                user_message="This request needs an idempotency key so it can never be applied twice.",
                action_required="Send a unique Idempotency-Key header: 1 to 255 visible ASCII characters, no "
                "spaces (a UUID fits).",
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
