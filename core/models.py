from __future__ import annotations

from collections.abc import Iterable
from typing import Any, ClassVar

from django.conf import settings
from django.db import models
from django.utils import timezone


class TimestampedModel(models.Model):
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        abstract = True


class StatusMachine:
    """The one status mover: a model with `status` and a `TRANSITIONS` table moves only along it.

    Webhooks, pollers, sweepers and people race on the same rows, so a move is one conditional
    update (`filter(pk=, status__in=sources).update(status=target)`) and the row count says who won.
    """

    TRANSITIONS: ClassVar[dict[str, set[str]]]

    @classmethod
    def status_move(cls, pk: Any, target: str, *, sources: Iterable[str] | None = None, **fields: Any) -> bool:
        """Move row `pk` to `target` from any status of `sources` (default: every status allowed to reach it).

        Naming a source that may not reach `target` is a bug and raises ValueError. False: another writer
        moved the row first (or it was never in a source status).
        """
        allowed = [status for status, targets in cls.TRANSITIONS.items() if target in targets]
        if sources is not None:
            named = [sources] if isinstance(sources, str) else list(sources)
            wrong = [status for status in named if status not in allowed]
            if wrong:
                raise ValueError(f"{cls.__name__}: {wrong} -> {target} is not in TRANSITIONS")
            allowed = named
        manager = cls._default_manager  # type: ignore[attr-defined]
        moved = manager.filter(pk=pk, status__in=allowed).update(status=target, updated_at=timezone.now(), **fields)
        return bool(moved)


class AuditLog(models.Model):
    """One row per staff or system action. Append-only (a PostgreSQL trigger rejects changes)."""

    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    actor_repr = models.CharField(max_length=150, help_text="Username at the time, or 'system'.")
    ip = models.GenericIPAddressField(null=True, blank=True)
    user_agent = models.CharField(max_length=512, blank=True)
    request_id = models.CharField(max_length=64, db_index=True)
    action = models.CharField(max_length=100, db_index=True)
    object_type = models.CharField(max_length=100, blank=True, help_text="app_label.model")
    object_id = models.CharField(max_length=64, blank=True)
    object_repr = models.CharField(max_length=255, blank=True)
    before = models.JSONField(null=True, blank=True)
    after = models.JSONField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [models.Index(fields=["object_type", "object_id"])]

    def __str__(self) -> str:
        return f"{self.actor_repr} {self.action} {self.object_type}:{self.object_id}"


class IdempotencyKey(models.Model):
    """A client's Idempotency-Key for one API POST and the response it produced.

    Keys are scoped per user. While the first request runs the row is
    `in_flight`; a final response is stored and replayed for 24 hours.
    """

    class Status(models.TextChoices):
        IN_FLIGHT = "in_flight"
        COMPLETED = "completed"

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+")
    key = models.CharField(max_length=255)
    method = models.CharField(max_length=10)
    path = models.CharField(max_length=500)
    request_hash = models.CharField(max_length=64)
    status = models.CharField(max_length=20, choices=Status.choices, default=Status.IN_FLIGHT)
    response_status = models.PositiveSmallIntegerField(null=True, blank=True)
    response_body = models.JSONField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    locked_at = models.DateTimeField()

    class Meta:
        constraints = [models.UniqueConstraint(fields=["user", "key"], name="idempotency_key_unique_per_user")]

    def __str__(self) -> str:
        return f"{self.key} ({self.status})"


class ProcessingLock(models.Model):
    """A lease on a long operation (preparing or executing a batch, releasing escrow).

    One row per key while held; it expires by itself, and staff can see and
    release it in the admin. The critical section inside still takes row locks.
    """

    key = models.CharField(max_length=200, unique=True)
    holder = models.CharField(max_length=150, help_text="Who holds it: a username or a task name.")
    reason = models.CharField(max_length=255, blank=True)
    acquired_at = models.DateTimeField()
    expires_at = models.DateTimeField(db_index=True)

    class Meta:
        ordering = ["-acquired_at"]
        permissions = [("release_processinglock", "Can release a processing lock")]

    def __str__(self) -> str:
        return f"{self.key} held by {self.holder} until {self.expires_at:%H:%M:%S}"


class Alert(TimestampedModel):
    """Something staff must look at: a job that stopped itself, a transfer out of retries.

    One open alert per `key`: raising it again counts the repeat instead of adding a row.
    """

    class Severity(models.TextChoices):
        WARNING = "warning"
        CRITICAL = "critical"

    class Status(models.TextChoices):
        OPEN = "open"
        ACKNOWLEDGED = "acknowledged"
        RESOLVED = "resolved"

    key = models.CharField(max_length=200, help_text="What the alert is about, e.g. escrow:timeouts:breaker.")
    severity = models.CharField(max_length=20, choices=Severity.choices, default=Severity.WARNING)
    status = models.CharField(max_length=20, choices=Status.choices, default=Status.OPEN, db_index=True)
    title = models.CharField(max_length=255)
    detail = models.TextField(blank=True)
    action_required = models.CharField(max_length=500, blank=True)
    occurrences = models.PositiveIntegerField(default=1)
    last_raised_at = models.DateTimeField()
    acknowledged_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )

    class Meta:
        ordering = ["-last_raised_at"]
        constraints = [
            models.UniqueConstraint(fields=["key"], condition=models.Q(status="open"), name="alert_one_open_per_key")
        ]
        permissions = [("acknowledge_alert", "Can acknowledge and resolve alerts")]

    def __str__(self) -> str:
        return f"[{self.severity}] {self.title}"


class ApiToken(models.Model):
    """A client app's API token, sent as `Authorization: Token <key>`.

    Only a SHA-256 of the key is stored (the key is shown once, when staff issue it); a revoked token, or one past
    `expires_at` or older than API_TOKEN_MAX_AGE_DAYS, is refused with a 401 (core.authentication).
    """

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="api_tokens")
    name = models.CharField(max_length=100, help_text="What uses it, e.g. 'checkout app (production)'.")
    key_prefix = models.CharField(max_length=8, editable=False, help_text="The key's first characters.")
    key_hash = models.CharField(max_length=64, unique=True, editable=False)
    created_at = models.DateTimeField(auto_now_add=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT, related_name="+", editable=False
    )
    expires_at = models.DateTimeField(null=True, blank=True, help_text="Empty: it does not expire by date.")
    revoked_at = models.DateTimeField(null=True, blank=True, editable=False)
    revoked_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT, related_name="+", editable=False
    )
    last_used_at = models.DateTimeField(null=True, blank=True, editable=False)

    class Meta:
        ordering = ["-created_at", "-id"]
        verbose_name = "API token"
        permissions = [("revoke_apitoken", "Can revoke an API token")]

    def __str__(self) -> str:
        return f"{self.name} ({self.key_prefix}...) for {self.user}"
