"""Processing locks: leases on long operations, visible to staff, expiring by themselves.

`processing_lock(key=..., holder=...)` is a context manager: it takes the lease
(or raises ResourceLocked, HTTP 423, naming the holder and expiry) and gives it
back on exit. A crashed holder's lease simply expires (15 minutes default).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta

from django.contrib.auth.base_user import AbstractBaseUser
from django.db import IntegrityError, transaction
from django.utils import timezone

from core.errors import NotFound, ResourceLocked
from core.models import ProcessingLock
from core.permissions import require_permission
from core.services import audit_record

DEFAULT_LEASE = timedelta(minutes=15)


def lock_acquire(*, key: str, holder: str, reason: str = "", lease: timedelta = DEFAULT_LEASE) -> ProcessingLock:
    now = timezone.now()
    with transaction.atomic():
        ProcessingLock.objects.filter(key=key, expires_at__lte=now).delete()  # an expired lease is free
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
    ProcessingLock.objects.filter(pk=lock.pk, holder=lock.holder).delete()


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
