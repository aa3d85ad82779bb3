"""Escrow deals: a buyer's money held until the deal completes, then paid to the seller minus commission.

The status table (`EscrowDeal.TRANSITIONS`) is the only source of allowed moves; every move is one
conditional update (`EscrowDeal.status_move`, from escrow.deals) so the API, webhooks and jobs can race safely.
What Stripe did is on the deal's money movements (providers.MoneyMovement, subject: the deal), not here.
"""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.db.models import F, Q

from core.models import StatusMachine, TimestampedModel

__all__ = ["CommissionTier", "EscrowDeal", "EscrowTransferReversal", "SellerAccount"]


class CommissionTier(TimestampedModel):
    """What the platform keeps of a released deal, in basis points (500 = 5%). Edited in the admin, audited."""

    name = models.CharField(max_length=50, unique=True)
    rate_bps = models.PositiveIntegerField(help_text="Commission in basis points: 500 is 5%.")
    description = models.CharField(max_length=255, blank=True)
    active = models.BooleanField(default=True, help_text="Inactive tiers cannot be given to new sellers.")

    class Meta:
        ordering = ["rate_bps", "name"]
        constraints = [models.CheckConstraint(condition=Q(rate_bps__lte=10_000), name="commission_tier_rate_le_100pct")]

    def __str__(self) -> str:
        return f"{self.name} ({self.rate_bps / 100:g}%)"


class SellerAccount(TimestampedModel):
    """A seller's Stripe connected account; `can_receive_transfers` follows Stripe's `account.updated`."""

    user = models.OneToOneField(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="seller_account")
    stripe_account_id = models.CharField(max_length=255, unique=True, help_text="Connected account id, acct_...")
    commission_tier = models.ForeignKey(CommissionTier, on_delete=models.PROTECT, related_name="sellers")
    can_receive_transfers = models.BooleanField(
        default=False, help_text="Stripe's `transfers` capability is active (kept current by account.updated)."
    )
    account_updated_at = models.DateTimeField(
        null=True, blank=True, help_text="Time of the newest account.updated event applied; older ones are ignored."
    )

    class Meta:
        ordering = ["stripe_account_id"]

    def __str__(self) -> str:
        return self.stripe_account_id


class EscrowDeal(StatusMachine, TimestampedModel):
    class Status(models.TextChoices):
        CREATED = "created"  # intent recorded; the hold is being placed (or its outcome is unknown)
        HELD = "held"  # the buyer's money is authorized or captured into escrow
        AWAITING_APPROVAL = "awaiting_approval"  # release asked for, above the threshold: a second person approves
        RELEASING = "releasing"  # capture in progress (or unknown)
        RELEASED = "released"  # split into seller payable and commission; transfer in progress (or unknown)
        TRANSFERRED = "transferred"  # the seller's connected account has the money
        TRANSFER_FAILED = "transfer_failed"  # refused by Stripe; retried (new key each time), then a human
        REFUNDING = "refunding"  # void or refund in progress (or unknown)
        REFUNDED = "refunded"  # the buyer has the money back (authorization voided or refunded)
        EXPIRED = "expired"  # the authorization lapsed at Stripe before capture: no money moved
        FAILED = "failed"  # the hold was declined: no money moved
        REVERSED = "reversed"  # the transfer was reversed (or failed) after it was made: seller payable again

    class TimeoutPolicy(models.TextChoices):
        REFUND = "refund"
        RELEASE = "release"

    class HoldMode(models.TextChoices):
        AUTHORIZATION = "authorization", "Card authorization (manual capture)"
        CAPTURED = "captured", "Captured into escrow"

    TRANSITIONS: dict[str, set[str]] = {
        Status.CREATED: {Status.HELD, Status.FAILED},
        Status.HELD: {Status.AWAITING_APPROVAL, Status.RELEASING, Status.REFUNDING, Status.EXPIRED},
        Status.AWAITING_APPROVAL: {Status.RELEASING, Status.REFUNDING, Status.EXPIRED},
        Status.RELEASING: {Status.RELEASED, Status.HELD, Status.EXPIRED},
        Status.RELEASED: {Status.TRANSFERRED, Status.TRANSFER_FAILED},
        Status.TRANSFER_FAILED: {Status.TRANSFERRED},
        Status.TRANSFERRED: {Status.REVERSED},
        Status.REFUNDING: {Status.REFUNDED, Status.HELD, Status.EXPIRED},
        Status.REFUNDED: set(),
        Status.EXPIRED: set(),
        Status.FAILED: set(),
        Status.REVERSED: set(),
    }
    CANCELABLE = (Status.HELD, Status.AWAITING_APPROVAL)

    buyer = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="escrow_deals")
    seller_account = models.ForeignKey(SellerAccount, on_delete=models.PROTECT, related_name="deals")
    amount_minor = models.BigIntegerField(help_text="What the buyer pays, in minor units.")
    currency = models.CharField(max_length=3)
    commission_bps = models.PositiveIntegerField(help_text="The seller's commission rate when the deal was made.")
    commission_minor = models.BigIntegerField(help_text="Commission in minor units, rounded half up.")
    deadline = models.DateTimeField(db_index=True)
    timeout_policy = models.CharField(max_length=10, choices=TimeoutPolicy.choices)
    hold_mode = models.CharField(max_length=20, choices=HoldMode.choices)
    status = models.CharField(max_length=20, choices=Status.choices, default=Status.CREATED, db_index=True)
    client_key = models.CharField(max_length=255, help_text="The buyer's idempotency key for creating this deal.")
    payment_method = models.CharField(max_length=255, help_text="Stripe payment method the hold is placed on.")
    transfer_group = models.CharField(max_length=64, blank=True, help_text="escrow-<id>, on every Stripe object.")
    payment_intent_id = models.CharField(max_length=255, blank=True, db_index=True)
    refund_id = models.CharField(max_length=255, blank=True)
    transfer_id = models.CharField(max_length=255, blank=True, db_index=True)
    reversed_minor = models.BigIntegerField(default=0, help_text="Taken back from the seller after the transfer.")
    failure_reason = models.CharField(max_length=500, blank=True)
    transfer_attempts = models.PositiveIntegerField(default=0)
    next_transfer_at = models.DateTimeField(null=True, blank=True, help_text="When the transfer is tried again.")
    release_requested_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    approved_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    authorized_at = models.DateTimeField(null=True, blank=True)
    authorization_warned_at = models.DateTimeField(
        null=True, blank=True, help_text="Flagged: the card authorization is close to lapsing."
    )
    captured_at = models.DateTimeField(null=True, blank=True)
    released_at = models.DateTimeField(null=True, blank=True)
    transferred_at = models.DateTimeField(null=True, blank=True)
    refunded_at = models.DateTimeField(null=True, blank=True)
    timed_out_at = models.DateTimeField(null=True, blank=True, help_text="When the timeout job applied the policy.")

    class Meta:
        ordering = ["-id"]
        constraints = [
            models.UniqueConstraint(fields=["buyer", "client_key"], name="escrow_deal_client_key_per_buyer"),
            models.CheckConstraint(condition=Q(amount_minor__gt=0), name="escrow_deal_amount_positive"),
            models.CheckConstraint(
                condition=Q(commission_minor__gte=0, commission_minor__lte=F("amount_minor")),
                name="escrow_deal_commission_within_amount",
            ),
        ]
        indexes = [
            models.Index(fields=["status", "deadline"], name="escrow_deal_status_deadline"),
            models.Index(fields=["status", "next_transfer_at"], name="escrow_deal_status_retry"),
        ]
        permissions = [
            ("release_escrowdeal", "Can release an escrow deal to the seller"),
            ("approve_escrowdeal", "Can approve a large escrow release (maker-checker)"),
            ("refund_escrowdeal", "Can cancel or refund an escrow deal"),
            ("retry_transfer_escrowdeal", "Can retry a failed escrow transfer now"),
        ]

    def __str__(self) -> str:
        return f"escrow-{self.pk} {self.amount_minor} {self.currency} ({self.status})"

    @property
    def seller_net_minor(self) -> int:
        return self.amount_minor - self.commission_minor

    @property
    def captured(self) -> bool:
        return self.captured_at is not None


class EscrowTransferReversal(models.Model):
    """Money Stripe took back from the seller after a transfer, one row per reversal (`trr_...`)."""

    deal = models.ForeignKey(EscrowDeal, on_delete=models.PROTECT, related_name="transfer_reversals")
    reversal_id = models.CharField(max_length=255, unique=True)
    amount_minor = models.BigIntegerField()
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.reversal_id} of escrow-{self.deal_id}: {self.amount_minor}"
