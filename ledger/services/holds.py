"""Holds: money reserved now, to be posted (fully or partly) or released later.

Invariants kept here:
- a hold counts against the credit account's available balance at once (its pending amounts are added to
  the balance shards it reserves, and the no-negative rule counts them);
- a hold is applied once per idempotency key; the same key with a different request is refused
  (`IdempotencyMismatch`);
- a hold is settled at most once: posted, voided or expired, moving along `Hold.TRANSITIONS`; posting
  releases the unposted rest, and its legs land on the shards the hold reserved;
- an expiry sweep never stops on one hold that fails: it is logged and left for the next run.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import structlog
from django.db import IntegrityError, connection, transaction
from django.utils import timezone

from core.errors import AppError, IdempotencyMismatch, InvalidRequest, InvalidStateTransition, NotFound
from core.gc_pause import collection_paused
from core.money import Money
from ledger.batch import LockedHold
from ledger.models import Hold, Transaction
from ledger.services.accounts import _account_facts
from ledger.services.posting import (
    _apply,
    _plan_hold_pending,
    _post,
    _request_hash,
    _validate_legs,
    credit,
    debit,
    retry_on_conflict,
)
from ledger.writer import AccountFacts, WritePlan

log = structlog.get_logger(__name__)


# --- creating --------------------------------------------------------------------


@dataclass(frozen=True)
class HoldRequest:
    """Reserve `amount` to move from the credit account to the debit account later."""

    idempotency_key: str
    debit_account_code: str
    credit_account_code: str
    amount: Money
    kind: str
    description: str = ""
    metadata: dict[str, Any] | None = None
    expires_at: datetime | None = None


def _new_hold(request: HoldRequest, accounts: dict[str, AccountFacts]) -> Hold:
    """Validate a hold request and build its (unsaved) row, shards chosen."""
    amount = request.amount
    if not isinstance(amount, Money) or amount.minor <= 0:
        raise InvalidRequest("a hold needs a positive Money amount", details={"amount": str(amount)})
    if request.debit_account_code == request.credit_account_code:
        raise InvalidRequest("a hold moves money between two different accounts")
    debited, credited = accounts[request.debit_account_code], accounts[request.credit_account_code]
    _validate_legs([debit(debited.code, amount), credit(credited.code, amount)], accounts)
    return Hold(
        idempotency_key=request.idempotency_key,
        request_hash=_request_hash(
            request.kind,
            [(debited.code, amount.minor, amount.currency), (credited.code, -amount.minor, amount.currency)],
        ),
        debit_account_id=debited.id,
        debit_shard=debited.pick_shard(),
        credit_account_id=credited.id,
        credit_shard=credited.pick_shard(),
        amount_minor=amount.minor,
        currency=amount.currency,
        kind=request.kind,
        description=request.description,
        metadata=request.metadata or {},
        expires_at=request.expires_at,
    )


@retry_on_conflict
def hold_create(
    *,
    idempotency_key: str,
    debit_account_code: str,
    credit_account_code: str,
    amount: Money,
    kind: str,
    description: str = "",
    metadata: dict[str, Any] | None = None,
    expires_at: datetime | None = None,
) -> Hold:
    """Reserve `amount` to move from the credit account to the debit account later.

    It counts against the available balance at once. Same key and same request returns the existing hold.
    """
    request = HoldRequest(
        idempotency_key, debit_account_code, credit_account_code, amount, kind, description, metadata, expires_at
    )
    accounts = _account_facts([request.debit_account_code, request.credit_account_code])
    hold = _new_hold(request, accounts)
    existing = Hold.objects.filter(idempotency_key=request.idempotency_key).first()
    if existing is not None:
        return _same_hold_or_mismatch(existing, hold.request_hash)
    try:
        with transaction.atomic():
            hold.save(force_insert=True)
    except IntegrityError:
        existing = Hold.objects.filter(idempotency_key=request.idempotency_key).first()
        if existing is None:
            raise
        return _same_hold_or_mismatch(existing, hold.request_hash)
    plan = WritePlan(transaction=None, accounts=list(accounts.values()))
    _plan_hold_pending(plan, hold, accounts, sign=+1)
    _apply(plan, accounts)
    return hold


@collection_paused()
@retry_on_conflict
def holds_create_many(*, requests: Sequence[HoldRequest]) -> list[Hold]:
    """Reserve many movements in one write: one insert, and one update per touched balance shard.

    All or nothing; in request order. A key already used for the same request returns that hold.
    """
    codes = {code for r in requests for code in (r.debit_account_code, r.credit_account_code)}
    accounts = _account_facts(codes)
    holds = [_new_hold(request, accounts) for request in requests]
    existing = {
        h.idempotency_key: h for h in Hold.objects.filter(idempotency_key__in=[h.idempotency_key for h in holds])
    }
    new = [hold for hold in holds if hold.idempotency_key not in existing]
    _holds_insert(new)
    plan = WritePlan(transaction=None, accounts=list(accounts.values()))
    for hold in new:
        _plan_hold_pending(plan, hold, accounts, sign=+1)
    if new:
        _apply(plan, accounts)
    return [
        _same_hold_or_mismatch(existing[hold.idempotency_key], hold.request_hash)
        if hold.idempotency_key in existing
        else hold
        for hold in holds
    ]


_HOLDS_INSERT_SQL = """
INSERT INTO ledger_hold (created_at, updated_at, status, posted_minor, idempotency_key, request_hash,
                         debit_account_id, debit_shard, credit_account_id, credit_shard, amount_minor, currency,
                         kind, description, metadata, expires_at)
SELECT %s, %s, %s, 0, h.*
  FROM jsonb_to_recordset(%s::jsonb)
       AS h (idempotency_key text, request_hash text, debit_account_id bigint, debit_shard int,
             credit_account_id bigint, credit_shard int, amount_minor bigint, currency text, kind text,
             description text, metadata jsonb, expires_at timestamptz)
RETURNING id, idempotency_key
"""
_HOLD_COLUMNS = (
    "idempotency_key", "request_hash", "debit_account_id", "debit_shard", "credit_account_id", "credit_shard",
    "amount_minor", "currency", "kind", "description", "metadata",
)  # fmt: skip


def _holds_insert(holds: list[Hold]) -> None:
    """Insert new holds and set their ids: one statement on PostgreSQL (the rows as one JSON text, far cheaper
    to send than arrays of strings), a bulk insert elsewhere."""
    if connection.vendor != "postgresql":
        Hold.objects.bulk_create(holds, batch_size=2000)
        return
    if not holds:
        return
    now = timezone.now()
    rows = [
        {
            **{name: getattr(hold, name) for name in _HOLD_COLUMNS},
            "expires_at": hold.expires_at and hold.expires_at.isoformat(),
        }
        for hold in holds
    ]
    with connection.cursor() as cursor:
        cursor.execute(_HOLDS_INSERT_SQL, [now, now, Hold.Status.PENDING, json.dumps(rows)])
        pks = dict((key, pk) for pk, key in cursor.fetchall())
    alias = connection.alias
    for hold in holds:
        hold.pk, hold.created_at, hold.updated_at = pks[hold.idempotency_key], now, now
        hold._state.adding, hold._state.db = False, alias


def _same_hold_or_mismatch(existing: Hold, request_hash: str) -> Hold:
    if existing.request_hash != request_hash:
        raise IdempotencyMismatch(
            f"hold key {existing.idempotency_key!r} was already used for a different reservation",
            user_message="This reservation reference was already used with other amounts or accounts.",
            action_required="Check the existing hold; do not reuse its reference.",
            details={"idempotency_key": existing.idempotency_key, "hold_id": existing.pk},
        )
    return existing


# --- settling --------------------------------------------------------------------


def _locked_hold(hold_id: int) -> Hold:
    hold = (
        Hold.objects.select_for_update(of=("self",))
        .select_related("debit_account", "credit_account")
        .filter(pk=hold_id)
        .first()
    )
    if hold is None:
        raise NotFound(f"hold {hold_id} does not exist", details={"hold_id": hold_id})
    return hold


@retry_on_conflict
def hold_post(*, hold_id: int, amount: Money | None = None, metadata: dict[str, Any] | None = None) -> Transaction:
    """Post a pending hold, fully or partly; the unposted rest is released.

    `metadata` adds to the hold's own on the posting (e.g. the provider reference of the money that moved).
    Posting an already posted hold for the same amount returns its transaction.
    """
    hold = _locked_hold(hold_id)
    post_minor = hold.amount_minor if amount is None else amount.minor
    if amount is not None and (amount.currency != hold.currency or not 0 < amount.minor <= hold.amount_minor):
        raise InvalidRequest(
            f"can post between 1 and {hold.amount_minor} {hold.currency} of hold {hold.pk}",
            user_message="The amount to capture must be positive and at most the amount held.",
            action_required="Capture an amount up to the held amount, in the hold's currency.",
            details={"hold_id": hold.pk, "held_minor": hold.amount_minor, "currency": hold.currency},
        )
    if hold.status == Hold.Status.POSTED and hold.posted_minor == post_minor:
        assert hold.posted_transaction is not None
        return hold.posted_transaction
    _require_pending(hold, Hold.Status.POSTED)
    money = Money(post_minor, hold.currency)
    txn, _ = _post(
        idempotency_key=f"hold:{hold.pk}:post",
        kind=hold.kind,
        legs=[debit(hold.debit_account.code, money), credit(hold.credit_account.code, money)],
        description=hold.description,
        metadata={**hold.metadata, **(metadata or {}), "hold_id": hold.pk},
        event_at=timezone.now(),
        settle_hold=hold,
    )
    hold.status, hold.posted_minor, hold.posted_transaction = Hold.Status.POSTED, post_minor, txn
    hold.save(update_fields=["status", "posted_minor", "posted_transaction", "updated_at"])
    return txn


def _require_pending(hold: Hold | LockedHold, target: str) -> None:
    if target not in Hold.TRANSITIONS[Hold.Status(hold.status)]:
        raise InvalidStateTransition(
            f"hold {hold.pk} is {hold.status}, cannot become {target}",
            user_message=f"This hold is already {hold.status}.",
            action_required="No action possible on a settled hold; reload it to see its outcome.",
            details={"hold_id": hold.pk, "status": hold.status},
        )


def _end_hold(hold_id: int, final_status: str) -> Hold:
    hold = _locked_hold(hold_id)
    if hold.status == final_status:
        return hold
    _require_pending(hold, final_status)
    accounts = _account_facts([hold.debit_account.code, hold.credit_account.code])
    plan = WritePlan(transaction=None, accounts=list(accounts.values()))
    _plan_hold_pending(plan, hold, accounts, sign=-1)
    _apply(plan, accounts)
    hold.status = final_status
    hold.save(update_fields=["status", "updated_at"])
    return hold


@retry_on_conflict
def hold_void(*, hold_id: int) -> Hold:
    """Release a pending hold without moving money. Voiding a voided hold is a no-op."""
    return _end_hold(hold_id, Hold.Status.VOIDED)


@retry_on_conflict
def hold_expire(*, hold_id: int) -> Hold:
    return _end_hold(hold_id, Hold.Status.EXPIRED)


def holds_expire_due(*, now: datetime | None = None) -> int:
    """Expire every pending hold past its expiry, each in its own transaction.

    A hold that fails is logged and left for the next run; it never stops the rest.
    """
    from ledger import services  # each hold goes through the package's `hold_expire`, so a patch of it applies

    due = Hold.objects.filter(status=Hold.Status.PENDING, expires_at__lte=now or timezone.now())
    expired = 0
    for hold_id in due.order_by("expires_at", "pk").values_list("pk", flat=True).iterator(chunk_size=500):
        try:
            services.hold_expire(hold_id=hold_id)
            expired += 1
        except InvalidStateTransition:
            continue  # settled meanwhile by someone else
        except AppError as error:
            log.error("ledger.hold_expire_failed", hold_id=hold_id, code=error.code, error=error.message)
    return expired
