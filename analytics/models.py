"""Daily summary tables: one row per (UTC day, kind, provider, currency, status), and one per failure reason.

Invariants (analytics.services keeps them):
- a row holds figures of raw rows *created* on its UTC day, in the status they have now; a recompute of a day
  replaces every row of that day and kind (upsert on the natural key, then the groups that no longer exist
  are deleted), so running it twice gives the same rows;
- amounts are integer sums of minor units of the row's own currency: never summed across currencies, never
  floats;
- the average time to a final state is `final_seconds / final_count`, kept as the two sums so days and
  providers add up exactly.
"""

from __future__ import annotations

from django.db import models
from django.db.models import Q


class Kind(models.TextChoices):
    """What is counted. `payment_attempt` is one provider tried for a payment (falls back show up here)."""

    PAYMENT = "payment"
    PAYMENT_ATTEMPT = "payment_attempt", "Payment attempt"
    REFUND = "refund", "Payment refund"
    PAYOUT = "payout", "Payout item"
    PAYOUT_BATCH = "payout_batch", "Payout batch"
    ESCROW = "escrow", "Escrow deal"
    PURCHASE = "purchase"
    PURCHASE_REFUND = "purchase_refund", "Purchase refund"


class DailyStatusSummary(models.Model):
    day = models.DateField(help_text="UTC day the counted rows were created.")
    kind = models.CharField(max_length=20, choices=Kind.choices)
    provider = models.CharField(max_length=20, blank=True)
    currency = models.CharField(max_length=3, blank=True)
    status = models.CharField(max_length=30)
    count = models.BigIntegerField()
    amount_minor = models.BigIntegerField(help_text="Sum of the rows' amounts, minor units of `currency`.")
    final_count = models.BigIntegerField(default=0, help_text="Rows in a final state whose duration is known.")
    final_seconds = models.BigIntegerField(default=0, help_text="Their seconds from creation to the final state.")
    computed_at = models.DateTimeField(help_text="When the rollup that wrote this row ran.")

    class Meta:
        ordering = ["-day", "kind", "provider", "currency", "status"]
        verbose_name = "daily status summary"
        verbose_name_plural = "daily status summaries"
        constraints = [
            models.UniqueConstraint(
                fields=["day", "kind", "provider", "currency", "status"], name="daily_status_summary_key"
            ),
            models.CheckConstraint(
                condition=Q(count__gte=0) & Q(final_count__gte=0) & Q(final_count__lte=models.F("count")),
                name="daily_status_summary_counts_sane",
            ),
        ]
        indexes = [models.Index(fields=["kind", "day"], name="daily_status_kind_day")]

    def __str__(self) -> str:
        return f"{self.day} {self.kind} {self.provider or '-'} {self.currency or '-'} {self.status}: {self.count}"


class DailyFailureReason(models.Model):
    day = models.DateField(help_text="UTC day the failed rows were created.")
    kind = models.CharField(max_length=20, choices=Kind.choices)
    provider = models.CharField(max_length=20, blank=True)
    reason = models.CharField(max_length=255, blank=True)
    count = models.BigIntegerField()
    computed_at = models.DateTimeField()

    class Meta:
        ordering = ["-day", "kind", "provider", "-count"]
        constraints = [
            models.UniqueConstraint(fields=["day", "kind", "provider", "reason"], name="daily_failure_reason_key"),
            models.CheckConstraint(condition=Q(count__gte=0), name="daily_failure_reason_count_sane"),
        ]
        indexes = [models.Index(fields=["kind", "day"], name="daily_failure_kind_day")]

    def __str__(self) -> str:
        return f"{self.day} {self.kind} {self.provider or '-'} {self.reason!r}: {self.count}"
