"""The one error type every layer raises, and one subclass per condition.

Each carries a stable `code`, a developer `message`, a `user_message` for a
finance person or customer, the `action_required` next, an HTTP status and
whether the same request may simply be retried. The DRF exception handler and
the admin render them; nothing else needs to know their shape.
"""

from __future__ import annotations

from typing import Any, ClassVar


class AppError(Exception):
    code: ClassVar[str] = "error"
    http_status: ClassVar[int] = 400
    retryable: ClassVar[bool] = False
    default_user_message: ClassVar[str] = "The request could not be completed."
    default_action_required: ClassVar[str] = "Check the request and try again, or contact support."

    def __init__(
        self,
        message: str,
        *,
        user_message: str | None = None,
        action_required: str | None = None,
        details: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.user_message = user_message or self.default_user_message
        self.action_required = action_required or self.default_action_required
        self.details = details or {}

    def as_body(self) -> dict[str, Any]:
        return {
            "error": {
                "code": self.code,
                "message": self.message,
                "user_message": self.user_message,
                "action_required": self.action_required,
                "retryable": self.retryable,
                "details": self.details,
            }
        }


class InvalidRequest(AppError):
    code = "invalid_request"
    default_user_message = "Some of the information given is not valid."
    default_action_required = "Correct the fields listed in the details and submit again."


class RequestTooLarge(AppError):
    code = "request_too_large"
    http_status = 413
    default_user_message = "The request is larger than this service accepts."
    default_action_required = "Send a smaller request; nothing was recorded."


class NotAuthenticated(AppError):
    code = "not_authenticated"
    http_status = 401
    default_user_message = "You are not signed in."
    default_action_required = "Sign in, or send a valid API token, and try again."


class PermissionDenied(AppError):
    code = "permission_denied"
    http_status = 403
    default_user_message = "You do not have permission to do this."
    default_action_required = "Ask an administrator for the permission named in the details."


class NotFound(AppError):
    code = "not_found"
    http_status = 404
    default_user_message = "The item was not found."
    default_action_required = "Check the identifier; it may belong to another user or not exist."


class Conflict(AppError):
    code = "conflict"
    http_status = 409
    default_user_message = "The request conflicts with the current state of the item."
    default_action_required = "Reload the item to see its current state before acting again."


class InsufficientFunds(Conflict):
    code = "insufficient_funds"
    default_user_message = "There is not enough available balance for this movement."
    default_action_required = "Fund the account or release pending holds, then try again."


class AlreadyReversed(Conflict):
    code = "already_reversed"
    default_user_message = "This transaction has already been reversed."
    default_action_required = "No action needed; look up the existing reversal in the details."


class InvalidStateTransition(Conflict):
    code = "invalid_state"
    default_user_message = "The item is not in a state that allows this action."
    default_action_required = "Reload the item to see its current state."


class IdempotencyInFlight(Conflict):
    code = "idempotency_in_flight"
    retryable = True
    default_user_message = "An identical request is still being processed."
    default_action_required = "Wait a moment and retry with the same Idempotency-Key."


class IdempotencyMismatch(AppError):
    code = "idempotency_mismatch"
    http_status = 422
    default_user_message = "This Idempotency-Key was already used for a different request."
    default_action_required = "Use a new Idempotency-Key for a new request, or resend the original one unchanged."


class ResourceLocked(AppError):
    code = "resource_locked"
    http_status = 423
    retryable = True
    default_user_message = "Someone else is already processing this item."
    default_action_required = "Wait until the lock expires (see details) or ask the holder to finish."


class RateLimited(AppError):
    code = "rate_limited"
    http_status = 429
    retryable = True
    default_user_message = "Too many requests in a short time."
    default_action_required = "Wait for the time given in Retry-After, then try again."

    def __init__(self, message: str, *, retry_after_seconds: int, **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.retry_after_seconds = retry_after_seconds
        self.details.setdefault("retry_after_seconds", retry_after_seconds)


class ProviderUnavailable(AppError):
    code = "provider_unavailable"
    http_status = 503
    retryable = True
    default_user_message = "The payment provider is not available right now."
    default_action_required = "Try again in a few minutes; no money has moved."


class LedgerContention(AppError):
    code = "ledger_contention"
    http_status = 503
    retryable = True
    default_user_message = "The ledger is busy and the movement was not recorded."
    default_action_required = "Retry the same request; nothing was recorded."
