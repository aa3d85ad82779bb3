"""The OpenAPI schema tells the truth about errors: every operation documents the statuses the shared plumbing
can answer (bad input, sign-in, permission, not found, Idempotency-Key replays, body size and type), each with
the one error body. A view declares only what is its own (423, 429, 503, a business 409)."""

from __future__ import annotations

from typing import Any

from drf_spectacular.openapi import AutoSchema
from drf_spectacular.utils import OpenApiResponse
from rest_framework.permissions import AllowAny

from core.api import ErrorSerializer, IdempotentMixin

SHARED_ERRORS = {
    400: "The request is not valid (a field, parameter, header, or a control character in the URL); "
    "error.details names it.",
    401: "Not signed in: no valid API token or session.",
    403: "Signed in, but without the permission this needs (or a session request without its CSRF token).",
    404: "Not found, or not yours: another customer's object answers the same as one that does not exist.",
    409: "The same Idempotency-Key is still in flight, or the object's state does not allow this.",
    413: "The request body is larger than the upload limit.",
    415: "The request body is not application/json.",
    422: "The Idempotency-Key was used before with a different request.",
}


class ApiSchema(AutoSchema):
    """drf-spectacular's AutoSchema plus the error statuses every view of a kind can answer."""

    def get_operation(self, *args: Any, **kwargs: Any) -> dict[str, Any] | None:
        operation = super().get_operation(*args, **kwargs)
        if operation is None:
            return None
        responses = operation["responses"]
        for code in self._shared_error_statuses(operation):
            if str(code) not in responses:
                described = OpenApiResponse(ErrorSerializer, description=SHARED_ERRORS[code])
                responses[str(code)] = self._get_response_for_code(described, str(code))
        operation["responses"] = dict(sorted(responses.items()))
        return operation

    def _shared_error_statuses(self, operation: dict[str, Any]) -> list[int]:
        locations = {parameter["in"] for parameter in operation.get("parameters", [])}
        codes = [400]  # any request: a control character in the path or query string is refused first
        if not all(isinstance(permission, AllowAny) for permission in self.view.get_permissions()):
            codes += [401, 403]
        if "path" in locations:
            codes.append(404)
        if isinstance(self.view, IdempotentMixin) and self.method == "POST":
            codes += [409, 422]
        if self.method in ("POST", "PUT", "PATCH"):
            codes += [413, 415]
        return codes
