"""Purchases of services, charged in two phases (authorize, then capture on delivery), with refunds.

Invariants (the services in the escrow/purchases/ package keep them; the database checks the arithmetic):
- a purchase has two axes: `status` says where the money is (see TRANSITIONS), `outcome` what happened to
  the service (delivered, failed, cancelled, timed out); `outcome` is decided once, by a conditional update
  from "", so delivery, cancel, timeout and webhooks race with exactly one winner;
- every provider call is a money movement of the one protocol (providers.models.MoneyMovement) with a key
  derived from the row (`purchase:{id}:authorize`, `:capture`, `:void`, `purchase:{id}:refund:{refund id}`),
  committed before the call; the movement is the truth about the provider, the `*_unknown` statuses only
  mirror a movement whose outcome is unknown;
- `refund_reserved_minor` (succeeded plus in-flight refunds) never exceeds `captured_minor`, and
  `refunded_minor` (succeeded) never exceeds `refund_reserved_minor`.
"""

from __future__ import annotations

from datetime import timedelta

from django.conf import settings
from django.db import models
from django.db.models import F, Q

from core.models import StatusMachine, TimestampedModel
from providers.models import REFUND_TRANSITIONS, RefundStatus

__all__ = ["PurchasableService", "Purchase", "PurchaseRefund", "ServicePrice"]


class PurchasableService(TimestampedModel):
    """A paid service in the catalogue, e.g. a phone verification, with how long delivery may take."""

    code = models.SlugField(max_length=60, unique=True)
    name = models.CharField(max_length=200)
    delivery_timeout = models.DurationField(
        default=timedelta(minutes=15), help_text="Not delivered by then: the authorization is voided."
    )
    active = models.BooleanField(default=True)

    class Meta:
        ordering = ["code"]
        constraints = [
            models.CheckConstraint(condition=Q(delivery_timeout__gt=timedelta(0)), name="service_timeout_positive")
        ]

    def __str__(self) -> str:
        return f"{self.name} ({self.code})"


class ServicePrice(TimestampedModel):
    """The price of a service in one currency, in minor units."""

    service = models.ForeignKey(PurchasableService, on_delete=models.CASCADE, related_name="prices")
    currency = models.CharField(max_length=3)
    amount_minor = models.BigIntegerField()

    class Meta:
        ordering = ["service", "currency"]
        constraints = [
            models.UniqueConstraint(fields=["service", "currency"], name="service_price_once_per_currency"),
            models.CheckConstraint(condition=Q(amount_minor__gt=0), name="service_price_positive"),
        ]

    def __str__(self) -> str:
        return f"{self.service_id} {self.amount_minor} {self.currency}"


class Purchase(StatusMachine, TimestampedModel):
    """One purchase of a service by a client-app user; the row is the truth, provider calls follow it."""

    class Status(models.TextChoices):
        AUTHORIZING = "authorizing"  # committed; the authorization call is being made
        AUTHORIZE_UNKNOWN = "authorize_unknown"
        DECLINED = "declined"  # known not authorized: no money moved
        RESERVED = "reserved"  # authorized (a hold on the card), waiting for delivery
        CAPTURING = "capturing"  # delivered; the capture call is being made
        CAPTURE_UNKNOWN = "capture_unknown"
        CAPTURED = "captured"  # money taken (refunds may follow)
        REFUNDED = "refunded"  # everything captured was refunded
        VOIDING = "voiding"  # failed, cancelled or timed out before capture; the void call is being made
        VOID_UNKNOWN = "void_unknown"
        VOIDED = "voided"  # the hold was released: no money moved

    class Outcome(models.TextChoices):
        NONE = "", "Open"
        DELIVERED = "delivered"
        FAILED = "failed"
        CANCELLED = "cancelled"
        TIMED_OUT = "timed_out"

    # Where Stripe's own answer can overtake us (a capture found done, an authorization found canceled),
    # the row follows the provider: those are the CAPTURED and VOIDED entries beyond the main path.
    TRANSITIONS = {
        Status.AUTHORIZING: {
            Status.RESERVED,
            Status.DECLINED,
            Status.AUTHORIZE_UNKNOWN,
            Status.VOIDING,
            Status.VOIDED,
            Status.CAPTURED,
        },
        Status.AUTHORIZE_UNKNOWN: {Status.RESERVED, Status.DECLINED, Status.VOIDING, Status.VOIDED, Status.CAPTURED},
        Status.RESERVED: {Status.CAPTURING, Status.VOIDING},
        Status.CAPTURING: {Status.CAPTURED, Status.CAPTURE_UNKNOWN, Status.VOIDED},
        Status.CAPTURE_UNKNOWN: {Status.CAPTURING, Status.CAPTURED, Status.VOIDED},
        Status.CAPTURED: {Status.REFUNDED},
        Status.VOIDING: {Status.VOIDED, Status.VOID_UNKNOWN, Status.CAPTURED},
        Status.VOID_UNKNOWN: {Status.VOIDING, Status.VOIDED, Status.CAPTURED},
        Status.DECLINED: set(),
        Status.VOIDED: set(),
        Status.REFUNDED: set(),
    }
    IN_FLIGHT = (Status.AUTHORIZING, Status.CAPTURING, Status.VOIDING)
    UNKNOWN = (Status.AUTHORIZE_UNKNOWN, Status.CAPTURE_UNKNOWN, Status.VOID_UNKNOWN)
    MONEY_BACK_OUTCOMES = (Outcome.FAILED, Outcome.CANCELLED, Outcome.TIMED_OUT)

    buyer = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="purchases")
    service = models.ForeignKey(PurchasableService, on_delete=models.PROTECT, related_name="purchases")
    client_key = models.CharField(max_length=255, help_text="The client's Idempotency-Key.")
    request_hash = models.CharField(max_length=64, help_text="What the client asked for under that key.")
    amount_minor = models.BigIntegerField()
    currency = models.CharField(max_length=3)
    status = models.CharField(max_length=20, choices=Status.choices, default=Status.AUTHORIZING)
    outcome = models.CharField(max_length=20, choices=Outcome.choices, default=Outcome.NONE, blank=True)
    outcome_detail = models.CharField(max_length=500, blank=True)
    outcome_at = models.DateTimeField(null=True, blank=True)
    provider = models.CharField(max_length=20, default="stripe")
    payment_method = models.CharField(max_length=100, help_text="e.g. a Stripe pm_...")
    payment_intent_id = models.CharField(max_length=100, blank=True, db_index=True)
    deliver_by = models.DateTimeField(db_index=True)
    captured_minor = models.BigIntegerField(default=0)
    refund_reserved_minor = models.BigIntegerField(default=0, help_text="Succeeded and in-flight refunds.")
    refunded_minor = models.BigIntegerField(default=0, help_text="Succeeded refunds.")
    failure_reason = models.CharField(max_length=500, blank=True)

    class Meta:
        ordering = ["-id"]
        indexes = [
            models.Index(fields=["status", "deliver_by"]),
            models.Index(fields=["outcome", "outcome_at"]),
        ]
        constraints = [
            models.UniqueConstraint(fields=["buyer", "client_key"], name="purchase_once_per_client_key"),
            models.CheckConstraint(condition=Q(amount_minor__gt=0), name="purchase_amount_positive"),
            models.CheckConstraint(
                condition=Q(captured_minor__gte=0) & Q(captured_minor__lte=F("amount_minor")),
                name="purchase_captured_within_amount",
            ),
            models.CheckConstraint(
                condition=Q(refund_reserved_minor__gte=0) & Q(refund_reserved_minor__lte=F("captured_minor")),
                name="purchase_refunds_within_captured",
            ),
            models.CheckConstraint(
                condition=Q(refunded_minor__gte=0) & Q(refunded_minor__lte=F("refund_reserved_minor")),
                name="purchase_refunded_within_reserved",
            ),
        ]
        permissions = [
            ("deliver_purchase", "Can report the delivery of a purchased service"),
            ("refund_purchase", "Can cancel and refund purchases"),
            ("sync_purchase", "Can ask the provider about purchases with an unknown outcome"),
        ]

    def __str__(self) -> str:
        return f"purchase {self.pk} {self.amount_minor} {self.currency} ({self.status})"

    @property
    def authorize_key(self) -> str:
        return f"purchase:{self.pk}:authorize"

    @property
    def capture_key(self) -> str:
        return f"purchase:{self.pk}:capture"

    @property
    def void_key(self) -> str:
        return f"purchase:{self.pk}:void"

    @property
    def spend_reference(self) -> str:
        return f"purchase:{self.pk}"


class PurchaseRefund(StatusMachine, TimestampedModel):
    """A (partial) refund of a captured purchase, recorded with its reserved amount before the provider call."""

    Status = RefundStatus  # the statuses every refund row shares (providers.models)
    TRANSITIONS = REFUND_TRANSITIONS

    purchase = models.ForeignKey(Purchase, on_delete=models.PROTECT, related_name="refunds")
    client_key = models.CharField(max_length=255, help_text="Once-only key of the request (API or system).")
    amount_minor = models.BigIntegerField()
    status = models.CharField(max_length=20, choices=Status.choices, default=Status.PENDING)
    provider_reference = models.CharField(max_length=100, blank=True, help_text="Stripe's refund id (re_...).")
    reason = models.CharField(max_length=255, blank=True)
    failure_reason = models.CharField(max_length=500, blank=True)
    requested_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )

    class Meta:
        ordering = ["id"]
        constraints = [
            models.UniqueConstraint(fields=["purchase", "client_key"], name="purchase_refund_once_per_key"),
            models.CheckConstraint(condition=Q(amount_minor__gt=0), name="purchase_refund_amount_positive"),
        ]

    def __str__(self) -> str:
        return f"refund {self.pk} of purchase {self.purchase_id}: {self.amount_minor} ({self.status})"

    @property
    def idempotency_key(self) -> str:
        return f"purchase:{self.purchase_id}:refund:{self.pk}"
