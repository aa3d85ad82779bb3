"""Webhook intake: verify the signature, store the raw event, answer fast, process later.

Each provider registers a verifier (raw body + headers -> event id and type,
or InvalidSignature) and handlers per event type. Receiving is idempotent:
one row per (provider, event id); only the request that stored it enqueues
processing. Processing claims the row with a conditional update, so
concurrent copies, redeliveries and the sweeper apply an event once; the
handlers themselves apply only forward state changes, so order does not matter.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import structlog
from django.contrib.auth.base_user import AbstractBaseUser
from django.db import close_old_connections, connection, transaction
from django.db.models import F, Q
from django.utils import timezone

from core.errors import AppError, InvalidRequest, InvalidStateTransition, NotFound
from core.permissions import require_permission
from core.services import audit_record
from providers.base import InvalidSignature
from providers.models import WebhookEvent
from providers.webhook_publisher import webhook_event_enqueue, webhook_events_publish

log = structlog.get_logger(__name__)

STUCK_AFTER = timedelta(minutes=10)
RETRY_FAILED_AFTER = timedelta(minutes=5)  # e.g. an event that arrived before the row it updates knew its id
MAX_ATTEMPTS = 5


class InvalidWebhookSignature(InvalidRequest):
    code = "invalid_signature"
    default_user_message = "The webhook signature is not valid."
    default_action_required = "Nothing was recorded. Check the webhook secret configured for this provider."


class MalformedWebhook(InvalidRequest):
    code = "malformed_webhook"
    default_user_message = "The webhook body is not an event of the shape this provider sends."
    default_action_required = "Nothing was recorded. Check what sent it; the provider's own events are unaffected."


# What a rejected (unverified or malformed) request keeps for staff: never more than this of its body.
REJECTED_BODY_CHARS = 4_096
REJECTED_HEADER_CHARS = 512
# A verifier reading a body of the wrong shape fails with one of these (or nests too deep to parse, or holds a
# number no date or amount can be); MoneyError (an amount out of core.money's bounds) is a ValueError.
MALFORMED = (KeyError, TypeError, ValueError, IndexError, AttributeError, RecursionError, OverflowError)


@dataclass(frozen=True)
class VerifiedEvent:
    event_id: str
    event_type: str


Verifier = Callable[[bytes, Mapping[str, str]], VerifiedEvent]
Handler = Callable[[WebhookEvent, dict[str, Any]], None]
# Applies many events of one type at once, in the order given, inside one transaction.
PageHandler = Callable[[list[tuple[WebhookEvent, dict[str, Any]]]], None]

_verifiers: dict[str, Verifier] = {}
_handlers: dict[tuple[str, str], list[Handler]] = {}
_page_handlers: dict[tuple[str, str], tuple[PageHandler, Handler]] = {}


def register_verifier(provider: str, verifier: Verifier) -> None:
    _verifiers[provider] = verifier


def register_handler(provider: str, event_type: str, handler: Handler) -> None:
    """Add a handler for an event type; every registered handler runs, each ignoring objects not its own."""
    handlers = _handlers.setdefault((provider, event_type), [])
    if handler not in handlers:
        handlers.append(handler)


def register_page_handler(provider: str, event_type: str, page_handler: PageHandler) -> None:
    """Add a handler that applies a burst of this type's events as one page (one transaction); a single event is
    a page of one. Bursts go to it only while it is the type's one handler."""
    key = (provider, event_type)
    if key in _page_handlers:
        return

    def one_event(event: WebhookEvent, body: dict[str, Any]) -> None:
        page_handler([(event, body)])

    _page_handlers[key] = (page_handler, one_event)
    register_handler(provider, event_type, one_event)


def webhook_receive(
    *, provider: str, body: bytes, headers: Mapping[str, str], admit_rejected: Callable[[], None] = lambda: None
) -> tuple[WebhookEvent, bool]:
    """Store a verified event once; returns (event, newly stored). Raises InvalidWebhookSignature or
    MalformedWebhook after keeping a capped copy, or whatever `admit_rejected` (called first: the view's rate
    limit on rejected requests) raises, keeping nothing."""
    verifier = _verifiers.get(provider)
    if verifier is None:
        raise NotFound(f"no webhook endpoint for provider {provider!r}", details={"provider": provider})
    stored_headers = {name.lower(): value for name, value in headers.items()}
    text = body.decode("utf-8", errors="replace")
    try:
        verified = _well_formed(verifier(body, headers))
    except InvalidSignature as error:
        admit_rejected()
        _store_rejected(provider, stored_headers, text, f"signature: {error}")
        raise InvalidWebhookSignature(f"{provider} webhook signature rejected: {error}") from error
    except MALFORMED as error:  # signed, but not an event of this provider's shape: 400, never a 500 redelivered
        admit_rejected()
        _store_rejected(provider, stored_headers, text, f"malformed: {type(error).__name__}: {error}")
        raise MalformedWebhook(f"{provider} webhook body is malformed: {type(error).__name__}") from error
    return _store_verified(provider, verified, stored_headers, text)


def _well_formed(verified: VerifiedEvent) -> VerifiedEvent:
    """The id and type fit their columns (the model's max_length) and hold no NUL (PostgreSQL refuses it)."""
    longest_id, longest_type = (
        WebhookEvent._meta.get_field(name).max_length or 0 for name in ("event_id", "event_type")
    )
    id_, type_ = verified.event_id, verified.event_type
    if not 0 < len(id_) <= longest_id or len(type_) > longest_type or "\x00" in id_ + type_:
        raise ValueError("the event id or type is missing, too long or holds NUL")
    return verified


def _store_rejected(provider: str, headers: dict[str, str], text: str, reason: str) -> None:
    """Keep a capped copy of a rejected request for staff; it is never processed."""
    kept = text if len(text) <= REJECTED_BODY_CHARS else f"{text[:REJECTED_BODY_CHARS]}... [{len(text)} characters]"
    WebhookEvent.objects.create(
        provider=provider,
        event_id=_claimed_event_id(kept),
        signature_valid=False,
        headers={name[:100]: str(value)[:REJECTED_HEADER_CHARS] for name, value in list(headers.items())[:50]},
        body=kept.replace("\x00", ""),
        status=WebhookEvent.Status.REJECTED,
        error=reason[:1_000],
    )
    log.warning("webhook.rejected", provider=provider, reason=reason[:200])


def _claimed_event_id(text: str) -> str:
    """The id an unverified body claims, for staff to read; never trusted."""
    try:
        payload = json.loads(text)
    except (ValueError, RecursionError):
        return ""
    return str(payload.get("id", ""))[:255].replace("\x00", "") if isinstance(payload, dict) else ""


def _store_verified(
    provider: str, verified: VerifiedEvent, headers: dict[str, str], text: str
) -> tuple[WebhookEvent, bool]:
    """One INSERT ... ON CONFLICT DO NOTHING (one round trip, no transaction of its own): a new event is stored, then
    queued for processing; a duplicate (the partial unique constraint on valid events) inserts nothing and is
    looked up."""
    event = WebhookEvent(
        provider=provider,
        event_id=verified.event_id,
        event_type=verified.event_type,
        signature_valid=True,
        headers=headers,
        body=text,
    )
    event.pk = _insert_unless_stored(event)
    if event.pk is None:
        duplicate = WebhookEvent.objects.get(provider=provider, event_id=verified.event_id, signature_valid=True)
        return duplicate, False
    event._state.adding, event._state.db = False, connection.alias
    transaction.on_commit(lambda: webhook_event_enqueue(event.pk))
    return event, True


def _insert_unless_stored(event: WebhookEvent) -> int | None:
    """The new row's id, or None when a valid event with this (provider, event id) is stored already. Inside an
    outer transaction the conflict leaves it usable (no IntegrityError, no savepoint needed)."""
    meta = WebhookEvent._meta
    fields = [field for field in meta.concrete_fields if not field.primary_key]
    values = [field.get_db_prep_save(field.pre_save(event, True), connection) for field in fields]
    quote = connection.ops.quote_name
    sql = (
        f"INSERT INTO {quote(meta.db_table)} ({', '.join(quote(field.column) for field in fields)}) "
        f"VALUES ({', '.join(['%s'] * len(fields))}) ON CONFLICT DO NOTHING RETURNING {quote(meta.pk.column)}"
    )
    with connection.cursor() as cursor:
        cursor.execute(sql, values)
        row = cursor.fetchone()
    return None if row is None else int(row[0])


def webhook_process(*, event_pk: int) -> WebhookEvent:
    """Run the handler for a stored event once; a concurrent or repeated call does nothing."""
    claimed = WebhookEvent.objects.filter(
        pk=event_pk, status__in=[WebhookEvent.Status.RECEIVED, WebhookEvent.Status.FAILED], signature_valid=True
    ).update(status=WebhookEvent.Status.PROCESSING, attempts=F("attempts") + 1, updated_at=timezone.now())
    event = WebhookEvent.objects.get(pk=event_pk)
    if not claimed:
        return event
    return _handle(event)


def _handle(event: WebhookEvent) -> WebhookEvent:
    """Run a claimed event's handlers in one transaction and record how it ended."""
    handlers = _handlers.get((event.provider, event.event_type), [])
    if not handlers:
        return _finish(event, WebhookEvent.Status.IGNORED)
    try:
        with transaction.atomic():
            body = json.loads(event.body)
            for handler in handlers:
                handler(event, body)
    except (AppError, *MALFORMED) as error:  # a handler refusing the event, or a body of an unexpected shape
        log.error("webhook.failed", provider=event.provider, event_id=event.event_id, error=repr(error))
        return _finish(event, WebhookEvent.Status.FAILED, error=repr(error))
    return _finish(event, WebhookEvent.Status.PROCESSED)


def webhook_events_process(*, event_pks: list[int]) -> int:
    """Process a burst of events: those of a type with a page handler as one page per type, the others one by one.
    One failing unexpectedly (left processing, for the sweeper) does not keep the others waiting. Returns how many
    were processed without such a failure."""
    pages, singles = _burst_pages(event_pks)
    done = sum(_crash_safe(_process_page, page_handler, page) for page_handler, page in pages)
    return done + sum(_crash_safe(_process_one, event_pk) for event_pk in singles)


def _process_one(event_pk: int) -> int:
    webhook_process(event_pk=event_pk)
    return 1


def _crash_safe(process: Callable[..., int], *args: Any) -> int:
    try:
        return process(*args)
    except Exception:  # as a task of its own would fail; the sweeper takes the events up again
        log.exception("webhook.process_crashed", process=process.__name__, args=repr(args)[:200])
        if not connection.in_atomic_block:  # a connection the failure broke is opened again for the next event
            close_old_connections()
        return 0


def _burst_pages(event_pks: list[int]) -> tuple[list[tuple[PageHandler, list[int]]], list[int]]:
    """The burst's events grouped by page handler, and the events without one, each in the order given."""
    rows = WebhookEvent.objects.filter(pk__in=event_pks).values_list("pk", "provider", "event_type")
    kinds = {pk: (provider, event_type) for pk, provider, event_type in rows}
    by_handler: dict[PageHandler, list[int]] = {}
    singles = []
    for pk in event_pks:
        key = kinds.get(pk, ("", ""))  # an id with no row is processed alone, and fails as it always did
        page_handler, one_event = _page_handlers.get(key, (None, None))
        if page_handler is not None and _handlers.get(key) == [one_event]:
            by_handler.setdefault(page_handler, []).append(pk)
        else:
            singles.append(pk)
    return list(by_handler.items()), singles


def _process_page(page_handler: PageHandler, event_pks: list[int]) -> int:
    """Claim the page's events at once and apply them in one transaction; if one of them is refused, each is
    applied on its own instead, so only that one fails."""
    events = _claim_many(event_pks)
    if not events:
        return 0
    try:
        with transaction.atomic():
            page_handler([(event, json.loads(event.body)) for event in events])
    except (AppError, *MALFORMED) as error:
        log.info("webhook.page_split", events=len(events), error=repr(error))
        for event in events:
            _handle(event)
        return len(events)
    now = timezone.now()
    WebhookEvent.objects.filter(pk__in=[event.pk for event in events]).update(
        status=WebhookEvent.Status.PROCESSED, error="", processed_at=now, updated_at=now
    )
    return len(events)


def _claim_many(event_pks: list[int]) -> list[WebhookEvent]:
    """Claim those of these events nobody else holds (received or failed, verified), in id order."""
    with transaction.atomic():
        events = list(
            WebhookEvent.objects.select_for_update(skip_locked=True)
            .filter(
                pk__in=event_pks,
                status__in=[WebhookEvent.Status.RECEIVED, WebhookEvent.Status.FAILED],
                signature_valid=True,
            )
            .order_by("pk")
        )
        WebhookEvent.objects.filter(pk__in=[event.pk for event in events]).update(
            status=WebhookEvent.Status.PROCESSING, attempts=F("attempts") + 1, updated_at=timezone.now()
        )
    return events


def _finish(event: WebhookEvent, status: str, error: str = "") -> WebhookEvent:
    event.status, event.error, event.processed_at = status, error, timezone.now()
    event.save(update_fields=["status", "error", "processed_at", "updated_at"])
    return event


def webhook_reprocess(*, event_pk: int, actor: AbstractBaseUser) -> WebhookEvent:
    """Staff: run a failed or ignored event again (handlers are idempotent)."""
    require_permission(actor, "providers.reprocess_webhookevent")
    reopened = WebhookEvent.objects.filter(
        pk=event_pk, signature_valid=True, status__in=[WebhookEvent.Status.FAILED, WebhookEvent.Status.IGNORED]
    ).update(status=WebhookEvent.Status.RECEIVED, updated_at=timezone.now())
    event = WebhookEvent.objects.filter(pk=event_pk).first()
    if event is None:
        raise NotFound(f"webhook event {event_pk} does not exist", details={"event_id": event_pk})
    if not reopened:
        raise InvalidStateTransition(
            f"webhook event {event_pk} is {event.status}",
            user_message=f"Only failed or ignored events can be reprocessed; this one is {event.status}.",
            action_required="Reload the event to see its current status.",
            details={"event_id": event_pk, "status": event.status},
        )
    audit_record(actor=actor, action="providers.webhook.reprocess", obj=event)
    return webhook_process(event_pk=event_pk)


def webhook_events_sweep() -> int:
    """Re-enqueue events whose task was lost (received, or stuck processing) and failed ones
    that have attempts left; after MAX_ATTEMPTS a failed event waits for staff to reprocess."""
    now = timezone.now()
    stuck = WebhookEvent.objects.filter(status=WebhookEvent.Status.PROCESSING, updated_at__lt=now - STUCK_AFTER).update(
        status=WebhookEvent.Status.RECEIVED, updated_at=now
    )
    waiting = list(
        WebhookEvent.objects.filter(
            Q(status=WebhookEvent.Status.RECEIVED, updated_at__lt=now - timedelta(minutes=1))
            | Q(status=WebhookEvent.Status.FAILED, attempts__lt=MAX_ATTEMPTS, updated_at__lt=now - RETRY_FAILED_AFTER),
            signature_valid=True,
        ).values_list("pk", flat=True)[:1000]
    )
    webhook_events_publish(waiting)
    return stuck + len(waiting)
