"""The API's token authentication: `Authorization: Token <key>` against revocable, expiring tokens (core.tokens).

Refusals are 401s with a code saying why (token_revoked, token_expired, authentication_failed), rendered in the
one error body by core.api.exception_handler.
"""

from __future__ import annotations

from typing import Any

from rest_framework import exceptions
from rest_framework.authentication import TokenAuthentication

from core.tokens import TokenRefused, api_token_authenticate


class TokenRevoked(exceptions.AuthenticationFailed):
    default_detail = "This API token has been revoked."
    default_code = "token_revoked"


class TokenExpired(exceptions.AuthenticationFailed):
    default_detail = "This API token has expired."
    default_code = "token_expired"


def _refusal(reason: str) -> exceptions.AuthenticationFailed:
    if reason == "revoked":
        return TokenRevoked()
    if reason == "expired":
        return TokenExpired()
    return exceptions.AuthenticationFailed("User inactive or deleted.")


class ExpiringTokenAuthentication(TokenAuthentication):
    """DRF's TokenAuthentication (same header, same keyword) over core.models.ApiToken, and DRF's own Token rows
    as legacy keys."""

    def authenticate_credentials(self, key: str) -> tuple[Any, Any]:
        try:
            found = api_token_authenticate(key)
        except TokenRefused as refused:
            raise _refusal(refused.reason) from None
        if found is None:
            raise exceptions.AuthenticationFailed("Invalid token.")
        return found
