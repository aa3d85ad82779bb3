from django.conf import settings
from django.db import models
from django.db.models import F, Q

from core.models import StatusMachine, TimestampedModel


class WebhookEvent(TimestampedModel):
    """A provider's webhook exactly as received, stored before any processing.

    Only events with a valid signature are unique per (provider, event id), so
    a forged request can never claim a real event's id and get it dropped as a
    duplicate; forged attempts are kept for staff to see and never processed.
    """

    class Status(models.TextChoices):
        RECEIVED = "received"
        PROCESSING = "processing"
        PROCESSED = "processed"
        IGNORED = "ignored"  # valid, but nothing here acts on this event type
        FAILED = "failed"
        REJECTED = "rejected"  # bad signature: never processed

    provider = models.CharField(max_length=20)
    event_id = models.CharField(max_length=255)
    event_type = models.CharField(max_length=100, blank=True)
    signature_valid = models.BooleanField()
    headers = models.JSONField(default=dict)
    body = models.TextField()
    status = models.CharField(max_length=20, choices=Status.choices, default=Status.RECEIVED)
    error = models.TextField(blank=True)
    attempts = models.PositiveIntegerField(default=0)
    processed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-id"]
        indexes = [models.Index(fields=["provider", "status"])]
        constraints = [
            models.UniqueConstraint(
                fields=["provider", "event_id"], condition=Q(signature_valid=True), name="webhook_event_unique_valid"
            )
        ]
        permissions = [
            ("reprocess_webhookevent", "Can reprocess a webhook event"),
            ("reset_circuit_breaker", "Can reset a provider circuit breaker"),
        ]

    def __str__(self) -> str:
        return f"{self.provider} {self.event_type or '?'} {self.event_id}"


class Provider(models.TextChoices):
    STRIPE = "stripe"
    PAYPAL = "paypal"
    MAYA = "maya"
    GCASH = "gcash"


class PaymentMethod(TimestampedModel):
    """A way to pay through a provider in one currency, with its limits and routing priority."""

    provider = models.CharField(max_length=20, choices=Provider.choices)
    method = models.CharField(max_length=30, help_text="e.g. card, paypal, maya_wallet, gcash")
    currency = models.CharField(max_length=3)
    min_minor = models.BigIntegerField(default=1)
    max_minor = models.BigIntegerField(help_text="Largest single payment, in minor units.")
    priority = models.PositiveSmallIntegerField(default=100, help_text="Lower is tried first.")
    enabled = models.BooleanField(default=True)

    class Meta:
        ordering = ["priority", "provider", "method"]
        constraints = [
            models.UniqueConstraint(fields=["provider", "method", "currency"], name="payment_method_unique"),
            models.CheckConstraint(
                condition=Q(min_minor__gte=1) & Q(max_minor__gte=F("min_minor")), name="method_limits_sane"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.provider}/{self.method} {self.currency}"


class FeeRule(TimestampedModel):
    """What a provider charges, and what the platform adds, from a date on.

    Percentages are basis points (250 = 2.50%); fixed parts are minor units of
    the rule's currency. The rule in force at a moment is the one with the
    latest `effective_from` not after it.
    """

    provider = models.CharField(max_length=20, choices=Provider.choices)
    method = models.CharField(max_length=30)
    currency = models.CharField(max_length=3)
    percent_bps = models.PositiveIntegerField()
    fixed_minor = models.BigIntegerField(default=0)
    platform_percent_bps = models.PositiveIntegerField(default=0)
    platform_fixed_minor = models.BigIntegerField(default=0)
    effective_from = models.DateTimeField()

    class Meta:
        ordering = ["provider", "method", "currency", "-effective_from"]
        constraints = [
            models.UniqueConstraint(
                fields=["provider", "method", "currency", "effective_from"], name="fee_rule_unique_start"
            ),
            models.CheckConstraint(
                condition=Q(percent_bps__lte=10_000)
                & Q(platform_percent_bps__lte=10_000)
                & Q(fixed_minor__gte=0)
                & Q(platform_fixed_minor__gte=0),
                name="fee_rule_sane",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.provider}/{self.method} {self.currency} from {self.effective_from:%Y-%m-%d}"


class CustomerDefaultMethod(TimestampedModel):
    """The payment method a customer picked as their default."""

    user = models.OneToOneField(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="default_method")
    provider = models.CharField(max_length=20, choices=Provider.choices)
    method = models.CharField(max_length=30)

    def __str__(self) -> str:
        return f"{self.user_id}: {self.provider}/{self.method}"


class RoutingDecision(models.Model):
    """Why a payment went where it went: every candidate considered, in order, and every skip with its reason."""

    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    user = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL)
    amount_minor = models.BigIntegerField()
    currency = models.CharField(max_length=3)
    source = models.CharField(max_length=20, help_text="explicit, preference, default, priority or lowest_fee")
    candidates = models.JSONField(default=list)
    skipped = models.JSONField(default=list)
    reference = models.CharField(max_length=100, blank=True, db_index=True, help_text="The payment it routed.")

    class Meta:
        ordering = ["-id"]

    def __str__(self) -> str:
        first = self.candidates[0]["provider"] if self.candidates else "nothing"
        return f"{self.amount_minor} {self.currency} -> {first}"


class Payment(StatusMachine, TimestampedModel):
    """A customer payment, routed to a provider; the row is the truth, provider calls follow it.

    Statuses move forward only (see TRANSITIONS); `unknown` means a provider
    may have taken the money and the protocol's sweeper will find out. The refunded total
    (succeeded plus in-flight refunds) never exceeds the amount.
    """

    class Status(models.TextChoices):
        PENDING = "pending"  # created, provider being called
        REQUIRES_ACTION = "requires_action"  # customer completes it at the provider (redirect)
        SUCCEEDED = "succeeded"
        FAILED = "failed"  # every provider tried is known not to have taken it
        UNKNOWN = "unknown"

    TRANSITIONS = {
        Status.PENDING: {Status.REQUIRES_ACTION, Status.SUCCEEDED, Status.FAILED, Status.UNKNOWN},
        Status.UNKNOWN: {Status.REQUIRES_ACTION, Status.SUCCEEDED, Status.FAILED},
        Status.REQUIRES_ACTION: {Status.SUCCEEDED, Status.FAILED},
        Status.SUCCEEDED: set(),
        Status.FAILED: set(),
    }

    reference = models.CharField(max_length=40, unique=True)
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="payments")
    client_key = models.CharField(max_length=255, help_text="The client's Idempotency-Key.")
    amount_minor = models.BigIntegerField()
    currency = models.CharField(max_length=3)
    status = models.CharField(max_length=20, choices=Status.choices, default=Status.PENDING)
    provider = models.CharField(max_length=20, blank=True)
    method = models.CharField(max_length=30, blank=True)
    provider_reference = models.CharField(max_length=100, blank=True, db_index=True)
    redirect_url = models.URLField(max_length=500, blank=True)
    payment_method_token = models.CharField(max_length=100, blank=True, help_text="e.g. a Stripe payment method.")
    fee_minor = models.BigIntegerField(default=0)
    platform_fee_minor = models.BigIntegerField(default=0)
    refunded_minor = models.BigIntegerField(default=0, help_text="Succeeded and in-flight refunds.")
    failure_reason = models.CharField(max_length=255, blank=True)
    routing_decision = models.ForeignKey(RoutingDecision, null=True, blank=True, on_delete=models.PROTECT)

    class Meta:
        ordering = ["-id"]
        indexes = [models.Index(fields=["status"], name="payment_status")]
        constraints = [
            models.UniqueConstraint(fields=["user", "client_key"], name="payment_once_per_client_key"),
            models.CheckConstraint(condition=Q(amount_minor__gt=0), name="payment_amount_positive"),
            models.CheckConstraint(
                condition=Q(refunded_minor__gte=0) & Q(refunded_minor__lte=F("amount_minor")),
                name="payment_refunds_within_amount",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.reference} {self.amount_minor} {self.currency} ({self.status})"


class PaymentAttempt(TimestampedModel):
    """One provider tried for a payment, recorded (committed) before the call, with its key."""

    class Status(models.TextChoices):
        PENDING = "pending"
        SUCCEEDED = "succeeded"
        REQUIRES_ACTION = "requires_action"
        DECLINED = "declined"
        UNKNOWN = "unknown"

    payment = models.ForeignKey(Payment, on_delete=models.PROTECT, related_name="attempts")
    provider = models.CharField(max_length=20)
    method = models.CharField(max_length=30)
    idempotency_key = models.CharField(max_length=255, unique=True)
    status = models.CharField(max_length=20, choices=Status.choices, default=Status.PENDING)
    provider_reference = models.CharField(max_length=100, blank=True)
    reason = models.CharField(max_length=255, blank=True)

    class Meta:
        ordering = ["id"]

    def __str__(self) -> str:
        return f"{self.payment_id} via {self.provider}: {self.status}"


class RefundStatus(models.TextChoices):
    """The statuses of every refund row (a payment's, a purchase's): providers.protocol.refunds moves them."""

    PENDING = "pending"  # committed; the refund call is being made
    WAITING = "waiting", "Accepted, waiting for the provider"  # pending at the provider: never success
    SUCCEEDED = "succeeded"
    FAILED = "failed"  # known not refunded; its reservation was released
    UNKNOWN = "unknown"  # sticky: only the provider's refund (found by our key) resolves it


REFUND_TRANSITIONS: dict[str, set[str]] = {
    RefundStatus.PENDING: {RefundStatus.WAITING, RefundStatus.SUCCEEDED, RefundStatus.FAILED, RefundStatus.UNKNOWN},
    RefundStatus.UNKNOWN: {RefundStatus.WAITING, RefundStatus.SUCCEEDED, RefundStatus.FAILED},
    RefundStatus.WAITING: {RefundStatus.SUCCEEDED, RefundStatus.FAILED},
    RefundStatus.SUCCEEDED: set(),
    RefundStatus.FAILED: set(),
}


class Refund(StatusMachine, TimestampedModel):
    """A (partial) refund of a payment, recorded before the provider call, with its key."""

    Status = RefundStatus
    TRANSITIONS = REFUND_TRANSITIONS

    payment = models.ForeignKey(Payment, on_delete=models.PROTECT, related_name="refunds")
    client_key = models.CharField(max_length=255)
    amount_minor = models.BigIntegerField()
    status = models.CharField(max_length=20, choices=Status.choices, default=Status.PENDING)
    idempotency_key = models.CharField(max_length=255, unique=True)
    provider_reference = models.CharField(max_length=100, blank=True)
    reason = models.CharField(max_length=255, blank=True)
    failure_reason = models.CharField(max_length=255, blank=True)

    class Meta:
        ordering = ["id"]
        constraints = [
            models.UniqueConstraint(fields=["payment", "client_key"], name="refund_once_per_client_key"),
            models.CheckConstraint(condition=Q(amount_minor__gt=0), name="refund_amount_positive"),
        ]

    def __str__(self) -> str:
        return f"refund {self.amount_minor} of {self.payment_id} ({self.status})"


# --- the money-moving protocol (providers/protocol/) ----------------------------------------


class MovementStatus(models.TextChoices):
    PENDING = "pending", "Sending"  # intent committed; the call is being made (or the process died making it)
    WAITING = "waiting", "Accepted, waiting for the provider"  # the provider took it; the outcome comes later
    UNKNOWN = "unknown", "Outcome unknown"  # sticky: only a success or a look-up resolves it
    SUCCEEDED = "succeeded", "Done"
    DECLINED = "declined", "Not done"  # known not to have happened


class ProviderIntent(StatusMachine, models.Model):
    """The fields every intent row of the protocol carries (DESIGN.md section 5).

    The row is committed, with its deterministic `key`, before any call; `status` follows the
    provider's answers; `next_sync_at` is when the sweeper looks again (never empty while the row is
    open, unless the schedule ran out and a staff alert was raised).
    """

    Status = MovementStatus
    OPEN = (Status.PENDING, Status.WAITING, Status.UNKNOWN)
    FINAL = (Status.SUCCEEDED, Status.DECLINED)
    TRANSITIONS: dict[str, set[str]] = {
        Status.PENDING: {Status.WAITING, Status.UNKNOWN, Status.SUCCEEDED, Status.DECLINED},
        Status.WAITING: {Status.UNKNOWN, Status.SUCCEEDED, Status.DECLINED},
        Status.UNKNOWN: {Status.WAITING, Status.SUCCEEDED, Status.DECLINED},
        Status.SUCCEEDED: set(),
        Status.DECLINED: set(),
    }

    key = models.CharField(max_length=255, unique=True, help_text="Our idempotency key at the provider.")
    provider = models.CharField(max_length=20)
    provider_reference = models.CharField(max_length=255, blank=True, db_index=True)
    status = models.CharField(max_length=20, choices=MovementStatus.choices, default=MovementStatus.PENDING)
    sync_attempts = models.PositiveSmallIntegerField(default=0)
    next_sync_at = models.DateTimeField(null=True, blank=True)
    failure_reason = models.CharField(max_length=500, blank=True)

    class Meta:
        abstract = True


class MoneyMovement(ProviderIntent, TimestampedModel):
    """One call that moves money at a provider: a capture, a refund, a transfer, a payout batch...

    `operation` names the domain's recipe (providers.protocol.operations); `subject_id` is the domain
    row it acts for (a deal, a purchase, a payment attempt, a refund, a payout batch or item).
    """

    operation = models.CharField(max_length=60)
    subject_id = models.BigIntegerField()
    amount_minor = models.BigIntegerField(default=0)
    currency = models.CharField(max_length=3, blank=True)
    sends = models.PositiveIntegerField(default=0, help_text="Times claimed to send or look up.")
    first_sent_at = models.DateTimeField(null=True, blank=True)
    claimed_until = models.DateTimeField(null=True, blank=True, help_text="A worker is on it until then.")
    was_unknown = models.BooleanField(default=False, help_text="Once unknown, a refused re-send proves nothing.")
    escalated_at = models.DateTimeField(null=True, blank=True, help_text="The schedule ran out: staff alerted.")
    resolved_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-id"]
        indexes = [
            models.Index(fields=["status", "next_sync_at"], name="movement_status_next_sync"),
            models.Index(fields=["operation", "subject_id"], name="movement_operation_subject"),
        ]
        constraints = [
            models.CheckConstraint(condition=Q(amount_minor__gte=0), name="movement_amount_not_negative"),
        ]
        permissions = [("sync_moneymovement", "Can ask the provider about a money movement now")]

    def __str__(self) -> str:
        return f"{self.operation} {self.key} ({self.status})"
