"""Spend limits: caps on money moved per user and for the whole platform, per hour, day and month."""

from __future__ import annotations

from datetime import datetime, timedelta

from django.conf import settings
from django.db import models

from core.models import TimestampedModel

__all__ = ["SpendCounter", "SpendLimit", "SpendReservation"]


class SpendLimit(TimestampedModel):
    """A cap on the amount and/or number of outflows in a calendar window (UTC).

    A user-scope limit without a user is the default for every user; one naming a user replaces
    the default of the same window and currency for that user. Global limits count everyone's money.
    """

    class Scope(models.TextChoices):
        USER = "user", "Per user"
        GLOBAL = "global", "Whole platform"

    class Window(models.TextChoices):
        HOUR = "hour", "hourly"
        DAY = "day", "daily"
        MONTH = "month", "monthly"

    scope = models.CharField(max_length=10, choices=Scope.choices)
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="+",
        help_text="Only for a per-user limit that overrides the default for one user.",
    )
    currency = models.CharField(max_length=3)
    window = models.CharField(max_length=10, choices=Window.choices)
    max_amount_minor = models.BigIntegerField(
        null=True, blank=True, help_text="Most money (minor units) in one window; empty for no amount cap."
    )
    max_count = models.PositiveIntegerField(null=True, blank=True, help_text="Most outflows in one window.")
    active = models.BooleanField(default=True)
    description = models.CharField(max_length=255, blank=True)

    class Meta:
        ordering = ["scope", "currency", "window", "id"]
        constraints = [
            models.CheckConstraint(
                condition=models.Q(max_amount_minor__isnull=False) | models.Q(max_count__isnull=False),
                name="spend_limit_caps_something",
                violation_error_message="Give an amount cap, a count cap, or both.",
            ),
            models.CheckConstraint(
                condition=models.Q(max_amount_minor__isnull=True) | models.Q(max_amount_minor__gte=0),
                name="spend_limit_amount_not_negative",
            ),
            models.CheckConstraint(
                condition=models.Q(scope="user") | models.Q(user__isnull=True),
                name="spend_limit_global_has_no_user",
                violation_error_message="A platform-wide limit applies to everyone; leave the user empty.",
            ),
            models.UniqueConstraint(
                fields=["scope", "user", "currency", "window"],
                condition=models.Q(active=True),
                name="spend_limit_one_active_per_subject_window",
                nulls_distinct=False,
                violation_error_message=(
                    "An active limit for this scope, user, currency and window already exists. "
                    "Edit that limit, or deactivate it before adding another."
                ),
            ),
        ]

    def __str__(self) -> str:
        who = "everyone" if self.scope == self.Scope.GLOBAL else (str(self.user) if self.user_id else "each user")
        return f"{self.get_window_display()} {self.currency} limit for {who}"

    def window_bounds(self, at: datetime) -> tuple[datetime, datetime]:
        """The calendar window (UTC) containing `at`: its start and the moment the limit resets."""
        start = at.replace(minute=0, second=0, microsecond=0)
        if self.window == self.Window.HOUR:
            return start, start + timedelta(hours=1)
        start = start.replace(hour=0)
        if self.window == self.Window.DAY:
            return start, start + timedelta(days=1)
        start = start.replace(day=1)
        return start, (start + timedelta(days=32)).replace(day=1)


class SpendCounter(models.Model):
    """Money and outflows counted against one limit, for one subject (a user, or 0 for global), in one window."""

    limit = models.ForeignKey(SpendLimit, on_delete=models.PROTECT, related_name="counters")
    subject_id = models.BigIntegerField(help_text="The user counted, or 0 for a global limit.")
    window_start = models.DateTimeField()
    amount_minor = models.BigIntegerField(default=0)
    count = models.PositiveIntegerField(default=0)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["limit", "subject_id", "window_start"], name="spend_counter_unique"),
            models.CheckConstraint(condition=models.Q(amount_minor__gte=0), name="spend_counter_not_negative"),
        ]

    def __str__(self) -> str:
        return f"{self.limit}: {self.amount_minor} in {self.count} from {self.window_start:%Y-%m-%d %H:%M}"


class SpendReservation(models.Model):
    """One outflow counted against the limits, by its business reference; released if no money moved."""

    reference = models.CharField(max_length=200, unique=True)
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+")
    amount_minor = models.BigIntegerField()
    currency = models.CharField(max_length=3)
    counters = models.ManyToManyField(SpendCounter, related_name="reservations", blank=True)
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    released_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.reference}: {self.amount_minor} {self.currency}"
