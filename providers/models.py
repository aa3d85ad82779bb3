from django.db import models
from django.db.models import Q

from core.models import TimestampedModel


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
        permissions = [("reprocess_webhookevent", "Can reprocess a webhook event")]

    def __str__(self) -> str:
        return f"{self.provider} {self.event_type or '?'} {self.event_id}"
