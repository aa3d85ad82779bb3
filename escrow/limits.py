"""Spend limits: count every outflow against the user's and the platform's caps before money leaves.

Invariants:
- a reservation is counted against every applicable limit or against none: the counters are
  raised by conditional updates (`amount + x <= cap`) inside one atomic block, and a refusal
  rolls the whole block back, the caller's intent row included;
- the check and the increment are one statement per counter, so concurrent outflows can never
  together pass a cap (PostgreSQL re-checks the condition on the updated row);
- one reservation per business reference: repeating it counts nothing;
- a released reservation (the money is known not to have moved) gives back exactly what it took,
  once; money that moved and came back later (a refund) stays counted.
Windows are calendar hours, days and months in UTC; counters are locked in limit order.
What counts: escrow holds, purchases and customer payments through the orchestrator (registered with
providers.payments as a spend guard), each by the paying user.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from django.contrib.auth.base_user import AbstractBaseUser
from django.db import IntegrityError, transaction
from django.db.models import F, Q
from django.utils import timezone

from core.errors import RateLimited
from core.money import Money
from escrow.models import SpendCounter, SpendLimit, SpendReservation


class SpendLimitExceeded(RateLimited):
    code = "spend_limit_exceeded"
    default_user_message = "This payment would go over a spending limit."
    default_action_required = "Try a smaller amount, or wait until the limit resets (see details)."


@dataclass(frozen=True)
class LimitUsage:
    limit: SpendLimit
    used: Money
    count: int
    resets_at: datetime

    @property
    def remaining(self) -> Money | None:
        if self.limit.max_amount_minor is None:
            return None
        return Money(max(self.limit.max_amount_minor - self.used.minor, 0), self.used.currency)

    @property
    def remaining_count(self) -> int | None:
        return None if self.limit.max_count is None else max(self.limit.max_count - self.count, 0)


def limits_for(*, user: AbstractBaseUser, currency: str) -> list[SpendLimit]:
    """The active limits an outflow by `user` in `currency` counts against, in lock order."""
    active = SpendLimit.objects.filter(active=True, currency=currency)
    own = list(active.filter(scope=SpendLimit.Scope.USER, user=user))
    overridden = {limit.window for limit in own}
    defaults = active.filter(scope=SpendLimit.Scope.USER, user__isnull=True).exclude(window__in=overridden)
    everyone = active.filter(scope=SpendLimit.Scope.GLOBAL)
    return sorted([*own, *defaults, *everyone], key=lambda limit: limit.pk)


@transaction.atomic
def spend_reserve(*, user: AbstractBaseUser, amount: Money, reference: str) -> None:
    """Count an outflow against every applicable limit, or raise SpendLimitExceeded and count nothing."""
    try:
        with transaction.atomic():
            reservation = SpendReservation.objects.create(
                reference=reference, user=user, amount_minor=amount.minor, currency=amount.currency
            )
    except IntegrityError:
        return  # already counted under this reference
    now = timezone.now().astimezone(UTC)
    counters = [_count(limit, user, amount, now) for limit in limits_for(user=user, currency=amount.currency)]
    reservation.counters.set(counters)


def _count(limit: SpendLimit, user: AbstractBaseUser, amount: Money, now: datetime) -> SpendCounter:
    window_start, resets_at = limit.window_bounds(now)
    subject_id = user.pk if limit.scope == SpendLimit.Scope.USER else 0
    counter_key: dict[str, Any] = {"limit": limit, "subject_id": subject_id, "window_start": window_start}
    SpendCounter.objects.bulk_create([SpendCounter(**counter_key)], ignore_conflicts=True)
    fits = Q()
    if limit.max_amount_minor is not None:
        fits &= Q(amount_minor__lte=limit.max_amount_minor - amount.minor)
    if limit.max_count is not None:
        fits &= Q(count__lte=limit.max_count - 1)
    counted = SpendCounter.objects.filter(fits, **counter_key).update(
        amount_minor=F("amount_minor") + amount.minor, count=F("count") + 1
    )
    counter = SpendCounter.objects.get(**counter_key)
    if not counted:
        raise _exceeded(limit, counter, amount, resets_at, now)
    return counter


def _exceeded(limit: SpendLimit, counter: SpendCounter, amount: Money, resets_at: datetime, now: datetime) -> Exception:
    usage = LimitUsage(limit, Money(counter.amount_minor, amount.currency), counter.count, resets_at)
    when, period = f"{resets_at:%Y-%m-%d %H:%M} UTC", limit.get_window_display()
    if limit.scope == SpendLimit.Scope.GLOBAL:
        user_message = f"Payments are paused: the platform's {period} limit has been reached."
        action_required = f"Try again after {when}; nothing was charged."
    else:
        left = []
        if usage.remaining is not None:
            left.append(f"{usage.remaining.format()} left")
        if usage.remaining_count is not None:
            left.append(f"{usage.remaining_count} payments left")
        user_message = f"This payment of {amount.format()} would go over your {period} limit ({', '.join(left)})."
        action_required = f"Try a smaller amount or wait until the limit resets at {when}; nothing was charged."
    return SpendLimitExceeded(
        f"spend limit {limit.pk} ({limit.scope}, {limit.window}, {limit.currency}) refuses {amount}",
        retry_after_seconds=max(int((resets_at - now).total_seconds()) + 1, 1),
        user_message=user_message,
        action_required=action_required,
        details={
            "limit": limit.pk,
            "scope": limit.scope,
            "window": limit.window,
            "currency": limit.currency,
            "resets_at": resets_at.isoformat(),
            "remaining_minor": usage.remaining.minor if usage.remaining is not None else None,
            "remaining_count": usage.remaining_count,
        },
    )


@transaction.atomic
def spend_release(*, reference: str) -> bool:
    """Give back what a reservation counted (its money never moved). False if unknown or already released."""
    reservation = SpendReservation.objects.select_for_update().filter(reference=reference).first()
    if reservation is None or reservation.released_at is not None:
        return False
    for counter_pk in sorted(reservation.counters.values_list("pk", flat=True)):
        SpendCounter.objects.filter(pk=counter_pk).update(
            amount_minor=F("amount_minor") - reservation.amount_minor, count=F("count") - 1
        )
    reservation.released_at = timezone.now()
    reservation.save(update_fields=["released_at"])
    return True


def spend_usage(*, user: AbstractBaseUser, currency: str) -> list[LimitUsage]:
    """What the user has used of each limit that applies to them, in the current windows."""
    now = timezone.now().astimezone(UTC)
    usages = []
    for limit in limits_for(user=user, currency=currency):
        window_start, resets_at = limit.window_bounds(now)
        subject_id = user.pk if limit.scope == SpendLimit.Scope.USER else 0
        counter = SpendCounter.objects.filter(limit=limit, subject_id=subject_id, window_start=window_start).first()
        used = counter.amount_minor if counter else 0
        usages.append(LimitUsage(limit, Money(used, currency), counter.count if counter else 0, resets_at))
    return usages


class SpendLimitsGuard:
    """Customer payments through the orchestrator (providers.payments) count against the same limits."""

    def reserve(self, *, user: AbstractBaseUser, amount: Money, reference: str) -> None:
        spend_reserve(user=user, amount=amount, reference=reference)

    def release(self, *, reference: str) -> bool:
        return spend_release(reference=reference)


SPEND_LIMITS_GUARD = SpendLimitsGuard()
