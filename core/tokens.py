"""Client API tokens: issue, revoke, and the check the API's authentication runs on every request.

A key is 40 random characters shown once; only its SHA-256 is stored, so a leaked database does not leak working
keys. DRF's own `Token` rows (rest_framework.authtoken) are still accepted as legacy keys, so code and tests that
make them keep working; they never expire unless API_TOKEN_MAX_AGE_DAYS says so. Migration core 0006 turned the
ones that existed into ApiTokens, and the admin no longer makes them.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.conf import settings
from django.contrib.auth.base_user import AbstractBaseUser
from django.db import transaction
from django.utils import timezone
from rest_framework.authtoken.models import Token

from core.models import ApiToken
from core.services import audit_record

# last_used_at is written at most this often per token: not one UPDATE for every API request.
LAST_USED_RESOLUTION = timedelta(minutes=1)


@dataclass(frozen=True)
class IssuedToken:
    token: ApiToken
    key: str  # the only time the key exists outside the client


class TokenRefused(Exception):
    """The key names a token that may no longer be used; `reason` is "revoked", "expired" or "inactive_user"."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def key_hash(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def _max_age_passed(created_at: datetime, now: datetime) -> bool:
    days = settings.API_TOKEN_MAX_AGE_DAYS
    return bool(days) and created_at + timedelta(days=days) <= now


def api_token_state(token: ApiToken, now: datetime | None = None) -> str:
    """The state staff see: active, revoked or expired (past its date, or older than API_TOKEN_MAX_AGE_DAYS)."""
    now = now or timezone.now()
    if token.revoked_at is not None:
        return "revoked"
    if (token.expires_at is not None and token.expires_at <= now) or _max_age_passed(token.created_at, now):
        return "expired"
    return "active"


@transaction.atomic
def api_token_issue(
    *, user: AbstractBaseUser, name: str, expires_at: datetime | None, actor: AbstractBaseUser | None
) -> IssuedToken:
    key = secrets.token_hex(20)
    token = ApiToken.objects.create(
        user=user,
        name=name,
        key_prefix=key[:8],
        key_hash=key_hash(key),
        expires_at=expires_at,
        created_by=actor if actor is not None and actor.pk else None,
    )
    audit_record(
        actor=actor,
        action="api_token.issue",
        obj=token,
        after={
            "user": user.get_username(),
            "name": name,
            "key_prefix": token.key_prefix,
            "expires_at": expires_at.isoformat() if expires_at else None,
        },
    )
    return IssuedToken(token=token, key=key)


@transaction.atomic
def api_token_revoke(*, token_pk: int, actor: AbstractBaseUser) -> tuple[ApiToken, bool]:
    """Revoke a token at once (False: it was revoked already, nothing changed)."""
    token = ApiToken.objects.select_for_update().get(pk=token_pk)
    if token.revoked_at is not None:
        return token, False
    token.revoked_at = timezone.now()
    token.revoked_by = actor
    token.save(update_fields=["revoked_at", "revoked_by"])
    audit_record(
        actor=actor,
        action="api_token.revoke",
        obj=token,
        before={"state": "active", "last_used_at": token.last_used_at.isoformat() if token.last_used_at else None},
        after={"state": "revoked", "user": token.user.get_username(), "key_prefix": token.key_prefix},
    )
    return token, True


def api_token_authenticate(key: str) -> tuple[AbstractBaseUser, ApiToken | Token] | None:
    """The user a key signs in, and its token; None when no token has this key. Raises TokenRefused."""
    now = timezone.now()
    token = ApiToken.objects.select_related("user").filter(key_hash=key_hash(key)).first()
    if token is not None:
        state = api_token_state(token, now)
        if state != "active":
            raise TokenRefused(state)
        if not token.user.is_active:
            raise TokenRefused("inactive_user")
        if token.last_used_at is None or token.last_used_at < now - LAST_USED_RESOLUTION:
            ApiToken.objects.filter(pk=token.pk).update(last_used_at=now)
        return token.user, token
    # DRF keys are 40 hex characters; anything else (even a NUL the database cannot compare) cannot be one.
    if not (key.isascii() and key.isalnum() and len(key) <= 40):
        return None
    legacy = Token.objects.select_related("user").filter(key=key).first()
    if legacy is None:
        return None
    if _max_age_passed(legacy.created, now):
        raise TokenRefused("expired")
    if not legacy.user.is_active:
        raise TokenRefused("inactive_user")
    return legacy.user, legacy
