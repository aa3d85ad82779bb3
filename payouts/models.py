"""Payout cycles: winners paid exactly once, in approved batches.

Invariants:
- a winner selection has at most one live payout item (new, pending,
  unclaimed, on hold or succeeded) across every batch: a partial unique index,
  so no retry batch can ever pay a winner twice;
- a batch's `sender_batch_id` is derived from its content (see services), so
  the same batch always has the same id and a changed batch a new one;
- each item's money is reserved by a ledger hold when the batch is prepared,
  posted when the item succeeds, voided when it ends unpaid;
- what happened at the provider is the money movement's (providers.protocol), never
  the batch's: a batch stays `submitting` while the movement of its batch create
  (PayPal) or of any item's transfer (Stripe) is open, and items stay NEW.
"""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.db.models import Q

from core.models import StatusMachine, TimestampedModel


class PayoutCycle(TimestampedModel):
    name = models.CharField(max_length=200)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, on_delete=models.PROTECT, related_name="+")

    class Meta:
        permissions = [("fund_payoutcycle", "Can fund the prize pool of a payout cycle")]

    def __str__(self) -> str:
        return f"cycle {self.pk}: {self.name}"


class RecipientType(models.TextChoices):
    EMAIL = "EMAIL"
    PHONE = "PHONE"
    PAYPAL_ID = "PAYPAL_ID"
    STRIPE_ACCOUNT = "STRIPE_ACCOUNT"  # paid by a Stripe Connect transfer


class WinnerSelection(TimestampedModel):
    cycle = models.ForeignKey(PayoutCycle, on_delete=models.PROTECT, related_name="selections")
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+")
    amount_minor = models.BigIntegerField()
    currency = models.CharField(max_length=3)
    recipient_type = models.CharField(max_length=20, choices=RecipientType.choices)
    recipient = models.CharField(max_length=255)
    paid_outside = models.BooleanField(default=False, help_text="Paid before this system (legacy); never paid again.")

    class Meta:
        ordering = ["id"]
        constraints = [
            models.UniqueConstraint(fields=["cycle", "user"], name="one_selection_per_winner_per_cycle"),
            models.CheckConstraint(condition=Q(amount_minor__gt=0), name="selection_amount_positive"),
        ]

    def __str__(self) -> str:
        return f"selection {self.pk}: user {self.user_id} {self.amount_minor} {self.currency}"


class PayoutBatch(StatusMachine, TimestampedModel):
    class Status(models.TextChoices):
        PREPARED = "prepared"  # waiting for a second staff user's approval
        APPROVED = "approved"
        SUBMITTING = "submitting"  # intent recorded; its money movement is open (sent, or being found out)
        SUBMITTED = "submitted"  # the provider accepted it; items are being paid
        COMPLETED = "completed"  # every item is final
        DENIED = "denied"  # refused as a whole; nothing was paid
        CANCELED = "canceled"

    TRANSITIONS = {
        Status.PREPARED: {Status.APPROVED, Status.CANCELED},
        Status.APPROVED: {Status.SUBMITTING, Status.CANCELED},
        Status.SUBMITTING: {Status.SUBMITTED, Status.DENIED},
        Status.SUBMITTED: {Status.COMPLETED},
        Status.COMPLETED: set(),
        Status.DENIED: set(),
        Status.CANCELED: set(),
    }
    ACTIVE = (Status.PREPARED, Status.APPROVED, Status.SUBMITTING, Status.SUBMITTED)

    class Provider(models.TextChoices):
        PAYPAL = "paypal"
        STRIPE = "stripe"

    cycle = models.ForeignKey(PayoutCycle, on_delete=models.PROTECT, related_name="batches")
    provider = models.CharField(max_length=20, choices=Provider.choices)
    sender_batch_id = models.CharField(max_length=100, unique=True)
    checksum = models.CharField(max_length=64)
    status = models.CharField(max_length=20, choices=Status.choices)
    currency = models.CharField(max_length=3)
    total_minor = models.BigIntegerField()
    item_count = models.PositiveIntegerField()
    provider_batch_id = models.CharField(max_length=100, blank=True, help_text="PayPal's payout_batch_id.")
    retry_of = models.ForeignKey("self", null=True, blank=True, on_delete=models.PROTECT, related_name="retries")
    prepared_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+")
    approved_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    failure_reason = models.CharField(max_length=255, blank=True)

    class Meta:
        ordering = ["-id"]
        permissions = [
            ("prepare_payoutbatch", "Can prepare payout batches"),
            ("approve_payoutbatch", "Can approve payout batches"),
            ("execute_payoutbatch", "Can execute payout batches"),
        ]

    def __str__(self) -> str:
        return f"{self.sender_batch_id} ({self.status})"


# The protocol operations (providers.protocol) that move payout money. The subject of a batch create is the
# PayoutBatch; of a transfer or an unclaimed-item cancel, the PayoutItem.
OPERATION_PAYPAL_BATCH = "payout.paypal_batch"
OPERATION_STRIPE_TRANSFER = "payout.stripe_transfer"
OPERATION_CANCEL_UNCLAIMED = "payout.cancel_unclaimed"

# Item statuses in which the winner is being, or has been, paid (see PayoutItem.LIVE).
LIVE_ITEM_STATUSES = ("NEW", "PENDING", "UNCLAIMED", "ONHOLD", "SUCCESS")


class PayoutItem(StatusMachine, TimestampedModel):
    class Status(models.TextChoices):
        NEW = "NEW"  # prepared; not known to be at the provider (its money movement may be open)
        PENDING = "PENDING"
        UNCLAIMED = "UNCLAIMED"
        ONHOLD = "ONHOLD"
        SUCCESS = "SUCCESS"
        FAILED = "FAILED"
        RETURNED = "RETURNED"
        BLOCKED = "BLOCKED"
        REFUNDED = "REFUNDED"
        REVERSED = "REVERSED"
        DENIED = "DENIED"  # its batch was refused as a whole
        CANCELED = "CANCELED"  # its batch was canceled before sending

    LIVE = LIVE_ITEM_STATUSES
    UNPAID_FINAL = (Status.FAILED, Status.RETURNED, Status.BLOCKED, Status.DENIED, Status.CANCELED)
    TAKEN_BACK = (Status.REFUNDED, Status.REVERSED)  # paid, then the money came back
    TRANSITIONS = {
        Status.NEW: {Status.PENDING, Status.SUCCESS, Status.FAILED, Status.DENIED, Status.CANCELED},
        Status.PENDING: {
            Status.SUCCESS,
            Status.FAILED,
            Status.UNCLAIMED,
            Status.ONHOLD,
            Status.BLOCKED,
            Status.RETURNED,
        },
        Status.ONHOLD: {Status.SUCCESS, Status.FAILED, Status.BLOCKED, Status.RETURNED},
        Status.UNCLAIMED: {Status.SUCCESS, Status.RETURNED},
        Status.SUCCESS: {Status.RETURNED, Status.REFUNDED, Status.REVERSED},
    }

    batch = models.ForeignKey(PayoutBatch, on_delete=models.PROTECT, related_name="items")
    selection = models.ForeignKey(WinnerSelection, on_delete=models.PROTECT, related_name="items")
    sender_item_id = models.CharField(max_length=100)
    amount_minor = models.BigIntegerField()
    currency = models.CharField(max_length=3)
    recipient_type = models.CharField(max_length=20, choices=RecipientType.choices)
    receiver = models.CharField(max_length=255)
    status = models.CharField(max_length=20, choices=Status.choices, default=Status.NEW)
    provider_item_id = models.CharField(max_length=100, blank=True, db_index=True)
    hold_id = models.BigIntegerField(null=True, blank=True, help_text="The ledger hold reserving this payout.")
    error = models.CharField(max_length=255, blank=True)

    class Meta:
        ordering = ["id"]
        constraints = [
            models.UniqueConstraint(fields=["batch", "sender_item_id"], name="payout_item_unique_in_batch"),
            models.UniqueConstraint(
                fields=["selection"], condition=Q(status__in=LIVE_ITEM_STATUSES), name="one_live_payout_per_selection"
            ),
        ]
        indexes = [models.Index(fields=["batch", "status"])]

    def __str__(self) -> str:
        return f"{self.sender_item_id} {self.amount_minor} {self.currency} ({self.status})"


# --- legacy payouts ---------------------------------------------------------------------
# Payouts made through PayPal before this system, imported from CSV and reconciled
# against winner selections (payouts/legacy.py). A row is never deleted or dropped:
# what cannot be parsed or matched stays here, flagged for review.


class LegacyPayout(TimestampedModel):
    class IdFormat(models.TextChoices):
        WINNER = "winner", "winner-{selection}-{user}"
        SELECTION_DASH_USER = "selection_dash_user", "{selection}-{user}"
        SELECTION_UNDERSCORE_USER = "selection_underscore_user", "{selection}_{user}"
        W_U = "w_u", "w{selection}u{user}"
        CYCLE_USER = "cycle_user", "cycle-{cycle}-user-{user}"
        USER = "user", "{user}"
        FREE_TEXT = "free_text", "free text"
        EMPTY = "empty", "empty"

    class ReviewStatus(models.TextChoices):
        PARSED = "parsed"  # imported, waiting for reconcile
        NEEDS_REVIEW = "needs_review"
        LINKED = "linked"  # a paid winner: selection marked paid outside, ledger posted
        AMBIGUOUS = "ambiguous"
        NO_MATCH = "no_match"
        NOT_PAID = "not_paid"  # PayPal never paid it (failed, returned, ...): nothing to reconcile

    source_file = models.CharField(max_length=255)
    row_number = models.PositiveIntegerField(help_text="1 is the first row after the header.")
    raw_row = models.JSONField()
    sender_item_id = models.TextField(blank=True, help_text="As found in the file.")
    id_format = models.CharField(max_length=30, choices=IdFormat.choices)
    parsed_selection_id = models.BigIntegerField(null=True, blank=True)
    parsed_user_id = models.BigIntegerField(null=True, blank=True)
    parsed_cycle_id = models.BigIntegerField(null=True, blank=True)
    paypal_transaction_id = models.CharField(max_length=255, blank=True)
    paypal_item_id = models.CharField(max_length=255, blank=True)
    amount_minor = models.BigIntegerField(null=True, blank=True, help_text="Empty when the amount did not parse.")
    currency = models.CharField(max_length=3, blank=True)
    status = models.CharField(max_length=32, blank=True, help_text="PayPal's status; only SUCCESS was paid.")
    review_status = models.CharField(max_length=20, choices=ReviewStatus.choices)
    review_note = models.TextField(blank=True)
    selection = models.ForeignKey(
        WinnerSelection, null=True, blank=True, on_delete=models.PROTECT, related_name="legacy_payouts"
    )
    ledger_transaction_id = models.BigIntegerField(null=True, blank=True)

    class Meta:
        ordering = ["id"]
        constraints = [
            models.UniqueConstraint(fields=["source_file", "row_number"], name="legacy_payout_row_once"),
            models.UniqueConstraint(
                fields=["selection"], condition=Q(review_status="linked"), name="one_linked_legacy_payout_per_selection"
            ),
        ]
        indexes = [models.Index(fields=["review_status"])]

    def __str__(self) -> str:
        return f"legacy {self.source_file}:{self.row_number} {self.sender_item_id!r} ({self.review_status})"


# --- end legacy payouts
