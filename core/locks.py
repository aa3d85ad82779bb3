"""Processing locks: leases on long operations, visible to staff, expiring by themselves.

`processing_lock(key=..., holder=...)` is a context manager: it takes the lease
(or raises ResourceLocked, HTTP 423, naming the holder and expiry) and gives it
back on exit. A crashed holder's lease simply expires (15 minutes default).

A lease past its expiry that nobody gave back is stale: its holder died or overran,
and the work it guarded may be half done. `locks_stale_check` (beat, every 5
minutes) raises one alert per stale lock (`lock:<key>`); the alert resolves itself
when the row goes (released by staff, by its late holder, or taken over by a new
holder).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta

from django.contrib.auth.base_user import AbstractBaseUser
from django.db import IntegrityError, transaction
from django.db.models import QuerySet
from django.utils import timezone

from core.alerts import KEY_LENGTH, alert_keys_active, alert_raise, alert_resolve
from core.errors import NotFound, ResourceLocked
from core.models import ProcessingLock
from core.permissions import require_permission
from core.services import audit_record

DEFAULT_LEASE = timedelta(minutes=15)
STALE_ALERT_PREFIX = "lock:"


def stale_alert_key(lock_key: str) -> str:
    return f"{STALE_ALERT_PREFIX}{lock_key}"[:KEY_LENGTH]


def lock_acquire(*, key: str, holder: str, reason: str = "", lease: timedelta = DEFAULT_LEASE) -> ProcessingLock:
    now = timezone.now()
    with transaction.atomic():
        expired, _ = ProcessingLock.objects.filter(key=key, expires_at__lte=now).delete()  # an expired lease is free
        if expired:
            alert_resolve(key=stale_alert_key(key), reason=f"taken over by {holder}")
        try:
            with transaction.atomic():
                return ProcessingLock.objects.create(
                    key=key, holder=holder, reason=reason, acquired_at=now, expires_at=now + lease
                )
        except IntegrityError:
            held = ProcessingLock.objects.filter(key=key).first()
    if held is None:  # released between our insert and our read: try once more
        return lock_acquire(key=key, holder=holder, reason=reason, lease=lease)
    raise ResourceLocked(
        f"{key} is locked by {held.holder} until {held.expires_at.isoformat()}",
        user_message=f"{held.holder} is already processing this ({held.reason or 'no reason given'}).",
        action_required=f"Wait until {held.expires_at:%H:%M} UTC, or ask {held.holder} to finish or release it.",
        details={"key": key, "holder": held.holder, "expires_at": held.expires_at.isoformat()},
    )


def lock_release(*, lock: ProcessingLock) -> None:
    released, _ = ProcessingLock.objects.filter(pk=lock.pk, holder=lock.holder).delete()
    if released and lock.expires_at <= timezone.now():  # it overran its lease: it may have been alerted on
        alert_resolve(key=stale_alert_key(lock.key), reason=f"released late by {lock.holder}")


@contextmanager
def processing_lock(
    *, key: str, holder: str, reason: str = "", lease: timedelta = DEFAULT_LEASE
) -> Iterator[ProcessingLock]:
    lock = lock_acquire(key=key, holder=holder, reason=reason, lease=lease)
    try:
        yield lock
    finally:
        lock_release(lock=lock)


def lock_release_by_staff(*, lock_pk: int, actor: AbstractBaseUser) -> None:
    """Staff: free a lock whose holder is gone (audited)."""
    require_permission(actor, "core.release_processinglock")
    lock = ProcessingLock.objects.filter(pk=lock_pk).first()
    if lock is None:
        raise NotFound(f"processing lock {lock_pk} does not exist (it may have expired)")
    audit_record(actor=actor, action="core.lock.release", obj=lock, before={"holder": lock.holder, "key": lock.key})
    lock.delete()
    alert_resolve(key=stale_alert_key(lock.key), reason=f"released by {actor.get_username()}")


def locks_stale(*, now: datetime | None = None) -> QuerySet[ProcessingLock]:
    """Leases past their expiry that nobody gave back (oldest first)."""
    return ProcessingLock.objects.filter(expires_at__lte=now or timezone.now()).order_by("expires_at")


def locks_stale_check(*, now: datetime | None = None, limit: int = 100) -> int:
    """Beat: one alert per stale lock; the alerts of stale locks that are gone resolve. Returns how many stale."""
    stale = list(locks_stale(now=now)[:limit])
    for lock in stale:
        alert_raise(
            key=stale_alert_key(lock.key),
            title=f"Processing lock {lock.key} expired without being released (held by {lock.holder})",
            detail=f"Taken {lock.acquired_at:%Y-%m-%d %H:%M} UTC for: {lock.reason or 'no reason given'}; expired "
            f"{lock.expires_at:%Y-%m-%d %H:%M} UTC. Its holder died or overran: the work may be half done.",
            action_required="Check the work the lock guarded (the batch, deal or reconciliation in its key) and "
            "finish or retry it; then release the lock in /admin/core/processinglock/.",
        )
    keys = {stale_alert_key(lock.key) for lock in stale}
    for key in alert_keys_active(prefix=STALE_ALERT_PREFIX) - keys:
        if len(stale) < limit or not locks_stale(now=now).filter(key=key.removeprefix(STALE_ALERT_PREFIX)).exists():
            alert_resolve(key=key, reason="the lock is gone")
    return len(stale)
