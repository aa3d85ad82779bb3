"""Daily reconciliation: runs, the issues they find, and the staging rows a run compares.

Monitoring reads every app and writes only these reports (and alerts). See monitoring/reconciliation/ for
the rules a run keeps.
"""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.db.models import Q

from core.models import TimestampedModel
from core.money import Money


class ReconciliationRun(models.Model):
    """One comparison of one provider's day: ledger vs provider report vs our records."""

    class Status(models.TextChoices):
        RUNNING = "running"
        SUCCEEDED = "succeeded"
        FAILED = "failed"

    class Trigger(models.TextChoices):
        SCHEDULE = "schedule"
        COMMAND = "command"
        ADMIN = "admin"

    date = models.DateField(help_text="The UTC day compared.")
    provider = models.CharField(max_length=20)
    status = models.CharField(max_length=20, choices=Status.choices, default=Status.RUNNING)
    trigger = models.CharField(max_length=20, choices=Trigger.choices)
    triggered_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT)
    started_at = models.DateTimeField()
    finished_at = models.DateTimeField(null=True, blank=True)
    ledger_rows = models.BigIntegerField(default=0, help_text="Ledger references (postings grouped) read.")
    provider_rows = models.BigIntegerField(default=0, help_text="Provider balance transactions read.")
    record_rows = models.BigIntegerField(default=0, help_text="Rows of our own records read.")
    matched_count = models.BigIntegerField(default=0)
    issue_count = models.BigIntegerField(default=0, help_text="Mismatches found by this run.")
    new_issue_count = models.BigIntegerField(default=0)
    fixed_issue_count = models.BigIntegerField(default=0, help_text="Open issues this run no longer found.")
    summary = models.JSONField(
        default=dict, blank=True, help_text="Counts and totals (minor units) per issue kind and currency."
    )
    error = models.TextField(blank=True)

    class Meta:
        ordering = ["-date", "-id"]
        indexes = [models.Index(fields=["provider", "date"])]
        permissions = [("run_reconciliation", "Can run a reconciliation")]

    def __str__(self) -> str:
        return f"{self.provider} {self.date} #{self.pk} ({self.status})"


class ReconciliationIssue(TimestampedModel):
    """One mismatch of one provider reference on one day, reported once however often the day is rerun."""

    class Kind(models.TextChoices):
        MISSING_IN_LEDGER = "missing_in_ledger", "Missing in ledger"
        MISSING_AT_PROVIDER = "missing_at_provider", "Missing at provider"
        MISSING_IN_RECORDS = "missing_in_records", "Missing in our records"
        AMOUNT_MISMATCH = "amount_mismatch", "Amount mismatch"
        STATUS_MISMATCH = "status_mismatch", "Status mismatch"
        DUPLICATE = "duplicate", "Duplicate"

    class Status(models.TextChoices):
        OPEN = "open"
        RESOLVED = "resolved", "Resolved by staff"
        FIXED = "fixed", "Gone on a rerun"

    TRANSITIONS = {
        Status.OPEN: {Status.RESOLVED, Status.FIXED},
        Status.RESOLVED: {Status.OPEN},
        Status.FIXED: {Status.OPEN},
    }

    run = models.ForeignKey(ReconciliationRun, on_delete=models.PROTECT, related_name="issues")
    last_seen_run = models.ForeignKey(ReconciliationRun, on_delete=models.PROTECT, related_name="+")
    date = models.DateField()
    kind = models.CharField(max_length=30, choices=Kind.choices)
    provider = models.CharField(max_length=20)
    provider_reference = models.CharField(max_length=255, blank=True)
    currency = models.CharField(max_length=3)
    ledger_amount_minor = models.BigIntegerField(null=True, blank=True, help_text="Net on the clearing account.")
    provider_amount_minor = models.BigIntegerField(null=True, blank=True, help_text="Net at the provider.")
    provider_gross_minor = models.BigIntegerField(null=True, blank=True)
    provider_fee_minor = models.BigIntegerField(null=True, blank=True)
    record_amount_minor = models.BigIntegerField(null=True, blank=True, help_text="Gross, signed as the provider's.")
    record_status = models.CharField(max_length=30, blank=True)
    ledger_postings = models.PositiveIntegerField(default=0)
    provider_rows = models.PositiveIntegerField(default=0)
    record_rows = models.PositiveIntegerField(default=0)
    detail = models.TextField(blank=True)
    status = models.CharField(max_length=20, choices=Status.choices, default=Status.OPEN)
    assignee = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    resolution_note = models.TextField(blank=True)
    resolved_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    resolved_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-date", "kind", "provider_reference"]
        constraints = [
            models.UniqueConstraint(
                fields=["provider", "date", "provider_reference", "currency", "kind"],
                name="reconciliation_issue_once_per_mismatch",
            ),
            models.CheckConstraint(
                condition=Q(status="resolved", resolved_at__isnull=False) | ~Q(status="resolved"),
                name="reconciliation_issue_resolved_has_time",
            ),
        ]
        indexes = [models.Index(fields=["status", "kind"]), models.Index(fields=["provider", "date", "status"])]
        permissions = [("resolve_reconciliationissue", "Can assign, resolve and reopen reconciliation issues")]

    def __str__(self) -> str:
        return f"{self.get_kind_display()} {self.provider_reference or '(no reference)'} on {self.date}"

    @property
    def difference_minor(self) -> int | None:
        if self.ledger_amount_minor is None or self.provider_amount_minor is None:
            return None
        return self.ledger_amount_minor - self.provider_amount_minor

    def money(self, minor: int | None) -> str:
        return "" if minor is None else Money(minor, self.currency).format()


# --- staging: a run's provider report and records, deleted when the run ends -----------------
# Plain tables without foreign keys or secondary indexes, so a day streams in at COPY speed.


class ReconciliationProviderRow(models.Model):
    run_id = models.BigIntegerField()
    transaction_id = models.CharField(max_length=255)
    reference = models.CharField(max_length=255)
    type = models.CharField(max_length=40)
    amount_minor = models.BigIntegerField()
    fee_minor = models.BigIntegerField()
    net_minor = models.BigIntegerField()
    currency = models.CharField(max_length=3)
    status = models.CharField(max_length=30)
    created = models.BigIntegerField(help_text="Unix seconds, as the provider reports it.")

    def __str__(self) -> str:
        return f"{self.transaction_id} {self.reference} {self.net_minor} {self.currency}"


class ReconciliationRecordRow(models.Model):
    run_id = models.BigIntegerField()
    source = models.CharField(max_length=40)
    reference = models.CharField(max_length=255)
    amount_minor = models.BigIntegerField()
    currency = models.CharField(max_length=3)
    status = models.CharField(max_length=30)
    settled = models.BooleanField(help_text="The record says the money moved.")
    in_day = models.BooleanField(help_text="Its time is on the day (not only in the slack around it).")

    def __str__(self) -> str:
        return f"{self.source} {self.reference} {self.amount_minor} {self.currency}"
