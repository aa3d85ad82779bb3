"""Shared writes: the audit log and API idempotency keys."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.contrib.auth.base_user import AbstractBaseUser
from django.db import IntegrityError, models, transaction
from django.utils import timezone

from core.context import current_context
from core.errors import IdempotencyInFlight, IdempotencyMismatch
from core.models import AuditLog, IdempotencyKey


def audit_record(
    *,
    actor: AbstractBaseUser | None,
    action: str,
    obj: models.Model | None = None,
    before: dict[str, Any] | None = None,
    after: dict[str, Any] | None = None,
    actor_repr: str = "system",
) -> AuditLog:
    """Write one audit row with the current request's IP, user agent and request id. `actor_repr` names an actor
    who is not a user (default "system"; "anonymous" for a failed sign-in)."""
    context = current_context()
    is_user = actor is not None and getattr(actor, "pk", None) is not None
    return AuditLog.objects.create(
        actor=actor if is_user else None,
        actor_repr=actor.get_username() if is_user else actor_repr,
        ip=context.ip,
        user_agent=context.user_agent,
        request_id=context.request_id,
        action=action,
        object_type=obj._meta.label_lower if obj is not None else "",
        object_id=str(obj.pk) if obj is not None else "",
        object_repr=str(obj)[:255] if obj is not None else "",
        before=before,
        after=after,
    )


# --- Idempotency-Key (Stripe semantics) -------------------------------------


@dataclass(frozen=True)
class IdempotencyClaim:
    """This request owns the key and must complete or release it."""

    row_id: int


@dataclass(frozen=True)
class IdempotencyReplay:
    """The key already completed: send this stored response again."""

    status: int
    body: Any


def _expired_before() -> Any:
    return timezone.now() - timedelta(hours=settings.IDEMPOTENCY_KEY_TTL_HOURS)


def idempotency_begin(
    *, user: AbstractBaseUser, key: str, method: str, path: str, request_hash: str
) -> IdempotencyClaim | IdempotencyReplay:
    """Claim `key` for this request, or say how to answer a repeat of it.

    Committed on its own, before the request's work starts, so a concurrent
    repeat sees the key in flight.
    """
    now = timezone.now()
    with transaction.atomic():
        try:
            with transaction.atomic():
                row = IdempotencyKey.objects.create(
                    user=user, key=key, method=method, path=path, request_hash=request_hash, locked_at=now
                )
            return IdempotencyClaim(row.pk)
        except IntegrityError:
            row = IdempotencyKey.objects.select_for_update().get(user=user, key=key)

        if row.created_at < _expired_before():
            row.delete()
            row = IdempotencyKey.objects.create(
                user=user, key=key, method=method, path=path, request_hash=request_hash, locked_at=now
            )
            return IdempotencyClaim(row.pk)
        if (row.method, row.path, row.request_hash) != (method, path, request_hash):
            raise IdempotencyMismatch(
                f"Idempotency-Key {key!r} was first used for {row.method} {row.path} with a different body",
                details={"idempotency_key": key, "first_used_for": f"{row.method} {row.path}"},
            )
        if row.status == IdempotencyKey.Status.COMPLETED:
            return IdempotencyReplay(status=row.response_status or 200, body=row.response_body)
        abandoned_before = now - timedelta(seconds=settings.IDEMPOTENCY_IN_FLIGHT_TIMEOUT_SECONDS)
        if row.locked_at < abandoned_before:
            row.locked_at = now
            row.save(update_fields=["locked_at"])
            return IdempotencyClaim(row.pk)
        raise IdempotencyInFlight(
            f"Idempotency-Key {key!r} is in flight since {row.locked_at.isoformat()}",
            details={"idempotency_key": key},
        )


def idempotency_complete(*, claim: IdempotencyClaim, status: int, body: Any) -> None:
    IdempotencyKey.objects.filter(pk=claim.row_id, status=IdempotencyKey.Status.IN_FLIGHT).update(
        status=IdempotencyKey.Status.COMPLETED, response_status=status, response_body=body
    )


def idempotency_release(*, claim: IdempotencyClaim) -> None:
    """Forget a key whose request ended in a retryable way, so the client can retry with it."""
    IdempotencyKey.objects.filter(pk=claim.row_id, status=IdempotencyKey.Status.IN_FLIGHT).delete()


def idempotency_keys_purge() -> int:
    deleted, _ = IdempotencyKey.objects.filter(created_at__lt=_expired_before()).delete()
    return deleted
