"""Admin for spend limits: limits are configuration (edited, audited); counters and reservations are read-only."""

from __future__ import annotations

from django.contrib import admin
from django.utils import timezone

from core.admin import AmountsInBoundsForm, ReadOnlyAdmin
from core.money import Money
from escrow.models import SpendCounter, SpendLimit, SpendReservation
from providers.admin import AuditedConfigAdmin


class SpendLimitForm(AmountsInBoundsForm):
    amount_fields = {"max_amount_minor": "currency"}
    zero_allowed = True  # a cap of zero blocks every outflow


@admin.register(SpendLimit)
class SpendLimitAdmin(AuditedConfigAdmin):
    form = SpendLimitForm
    list_display = ("__str__", "scope", "user", "currency", "window", "amount_cap", "max_count", "used_now", "active")
    list_filter = ("scope", "window", "currency", "active")
    search_fields = ("user__username", "description")
    raw_id_fields = ("user",)

    @admin.display(description="Amount cap")
    def amount_cap(self, limit: SpendLimit) -> str:
        return "—" if limit.max_amount_minor is None else Money(limit.max_amount_minor, limit.currency).format()

    @admin.display(description="Used this window (global)")
    def used_now(self, limit: SpendLimit) -> str:
        if limit.scope != SpendLimit.Scope.GLOBAL:
            return "per user"
        window_start, _ = limit.window_bounds(timezone.now())
        counter = limit.counters.filter(subject_id=0, window_start=window_start).first()
        used = counter.amount_minor if counter else 0
        return f"{Money(used, limit.currency).format()} in {counter.count if counter else 0}"


@admin.register(SpendCounter)
class SpendCounterAdmin(ReadOnlyAdmin):
    list_display = ("limit", "subject_id", "window_start", "amount", "count")
    list_filter = ("limit__window", "limit__scope")
    search_fields = ("=subject_id",)

    @admin.display(description="Amount")
    def amount(self, counter: SpendCounter) -> str:
        return Money(counter.amount_minor, counter.limit.currency).format()


@admin.register(SpendReservation)
class SpendReservationAdmin(ReadOnlyAdmin):
    list_display = ("reference", "user", "amount", "created_at", "released_at")
    search_fields = ("reference", "user__username")
    date_hierarchy = "created_at"

    @admin.display(description="Amount")
    def amount(self, reservation: SpendReservation) -> str:
        return Money(reservation.amount_minor, reservation.currency).format()
