"""Posting in bulk: many ledger transactions in one call, one statement and one commit.

Invariants kept here (and, on PostgreSQL, by the database as well, exactly as for one posting):
- every transaction of a batch is its own journal entry: it balances to zero per currency, has at
  least two legs, and is applied once per its own idempotency key; a key already posted with the
  same request returns that transaction, with a different one it is refused (`IdempotencyMismatch`),
  and a key given twice in one batch is one posting (or a mismatch);
- a call is all or nothing: one refused transaction (insufficient funds, a mismatch, a hold not
  pending) refuses the whole call and nothing of it is written;
- an account that may not go negative never does at any step of the batch, counting pending holds:
  the steps are the batch's transactions in the order of their keys, after the pending amounts of
  the holds it voids are released;
- a hold is settled at most once: `holds_settle_many` posts each hold in full (its own transaction,
  keyed `hold:{id}:post` like `hold_post`, so it can be reversed on its own later) or voids it, and a
  hold already posted or voided that way is returned as it is.

How it runs: this module validates every request and builds one write plan per transaction
(`ledger.services.posting`), and `ledger.batch` applies them all at once: each touched balance shard
is locked and updated once, in sorted order, and all entries are inserted together.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

from django.db import connection
from django.utils import timezone

from core.errors import IdempotencyMismatch, InvalidRequest, NotFound
from core.gc_pause import collection_paused
from core.money import Money
from ledger.batch import BatchPlan, LockedHold, apply_batch, holds_lock, holds_mark
from ledger.models import Account, Hold, Transaction
from ledger.services.accounts import _account_facts, _remember_after_commit
from ledger.services.holds import _require_pending
from ledger.services.posting import (
    Leg,
    _insufficient_funds,
    _plan_hold_pending,
    _posting_plan,
    _transaction_from_row,
    credit,
    debit,
    retry_on_conflict,
)
from ledger.writer import AccountFacts, ShortOfFunds, TransactionRow, WritePlan

CHUNK = 1000  # rows per `IN (...)` list: well inside every database's limit on parameters
T = TypeVar("T")


@dataclass(frozen=True)
class PostingRequest:
    """One balanced transaction of a batch (see `transaction_post` for the meaning of each field)."""

    idempotency_key: str
    kind: str
    legs: Sequence[Leg]
    description: str = ""
    metadata: dict[str, Any] | None = None
    event_at: datetime | None = None


@dataclass(frozen=True)
class HoldPosting:
    """A hold to post in full; `metadata` adds to the hold's own on the posting (e.g. a provider reference)."""

    hold_id: int
    metadata: dict[str, Any] | None = None


def _chunks(values: Sequence[T]) -> Iterator[Sequence[T]]:
    for start in range(0, len(values), CHUNK):
        yield values[start : start + CHUNK]


# --- transactions -----------------------------------------------------------------------------


@collection_paused()
@retry_on_conflict
def transactions_post_many(*, requests: Sequence[PostingRequest]) -> list[Transaction]:
    """Post many balanced transactions in one write, each once per its own key; all or nothing.

    Returns the transactions in request order: new ones, or those first posted under the same key.
    """
    if not requests:
        return []
    accounts = _account_facts({leg.account_code for request in requests for leg in request.legs})
    now = timezone.now()
    plans = [
        _posting_plan(
            accounts,
            idempotency_key=request.idempotency_key,
            kind=request.kind,
            legs=request.legs,
            description=request.description,
            metadata=request.metadata,
            event_at=request.event_at,
            now=now,
        )
        for request in requests
    ]
    ids, replayed, rows = _post_plans(plans, accounts)
    found = Transaction.objects.in_bulk([ids[key] for key in replayed])
    alias = connection.alias
    return [
        found[ids[key]] if key in replayed else _transaction_from_row(ids[key], rows[key], alias)
        for key in (request.idempotency_key for request in requests)
    ]


def _unique_by_key(plans: Iterable[WritePlan]) -> list[WritePlan]:
    """One plan per key, sorted by key; the same key with a different request is a mismatch."""
    by_key: dict[str, WritePlan] = {}
    for plan in plans:
        assert plan.transaction is not None
        key = plan.transaction.idempotency_key
        first = by_key.setdefault(key, plan)
        if first.transaction is not None and first.transaction.request_hash != plan.transaction.request_hash:
            raise _mismatch(key, transaction_id=None)
    return [by_key[key] for key in sorted(by_key)]


def _post_plans(
    plans: Iterable[WritePlan], accounts: dict[str, AccountFacts], releases: WritePlan | None = None
) -> tuple[dict[str, int], set[str], dict[str, TransactionRow]]:
    """Apply the plans (and the releases) as one batch; return each key's transaction id (new or already
    there), the keys that were already there, and each key's transaction row."""
    unique = _unique_by_key(plans)
    batch = BatchPlan(accounts=list(accounts.values()), transactions=unique, releases=releases)
    try:
        claimed = apply_batch(batch)
    except ShortOfFunds as short:
        raise _insufficient_funds(short, accounts, [*unique, *([releases] if releases else [])]) from None
    ids: dict[str, int] = {}
    replayed: dict[str, str] = {}
    rows: dict[str, TransactionRow] = {}
    for transaction_id, plan in zip(claimed, unique, strict=True):
        row = plan.transaction
        assert row is not None
        rows[row.idempotency_key] = row
        if transaction_id is None:
            replayed[row.idempotency_key] = row.request_hash
        else:
            ids[row.idempotency_key] = transaction_id
    ids.update(_existing_transactions(replayed))
    _remember_after_commit(accounts)
    return ids, set(replayed), rows


def _existing_transactions(request_hashes: dict[str, str]) -> dict[str, int]:
    """The ids of the transactions already posted under these keys; each must be the same request."""
    found: dict[str, tuple[int, str]] = {}
    for keys in _chunks(sorted(request_hashes)):
        rows = Transaction.objects.filter(idempotency_key__in=keys).values_list("idempotency_key", "pk", "request_hash")
        found.update((key, (pk, request_hash)) for key, pk, request_hash in rows)
    for key, request_hash in request_hashes.items():
        if found[key][1] != request_hash:
            raise _mismatch(key, transaction_id=found[key][0])
    return {key: pk for key, (pk, _) in found.items()}


def _mismatch(key: str, *, transaction_id: int | None) -> IdempotencyMismatch:
    return IdempotencyMismatch(
        f"ledger key {key!r} was already posted, or is asked for, with different legs",
        user_message="This movement was already recorded with different amounts or accounts.",
        action_required="Check the existing transaction; do not reuse its reference for another movement.",
        details={"idempotency_key": key, "transaction_id": transaction_id},
    )


# --- holds ------------------------------------------------------------------------------------


@collection_paused()
@retry_on_conflict
def holds_settle_many(*, post: Sequence[HoldPosting] = (), void: Sequence[int] = ()) -> dict[int, int]:
    """Post holds in full and void others, in one write; all or nothing.

    Each posted hold gets its own transaction (`hold:{id}:post`). A hold already posted in full is
    returned with its transaction, one already voided is left as it is; any other settled hold is
    refused (`InvalidStateTransition`). Returns {hold id: transaction id} of the posted holds.
    """
    metadata = {posting.hold_id: posting.metadata or {} for posting in post}
    if metadata.keys() & set(void):
        raise InvalidRequest(
            "a hold cannot be posted and voided at once", details={"holds": sorted(metadata.keys() & set(void))}
        )
    holds = _locked_holds(sorted({*metadata, *void}))
    codes = dict(Account.objects.filter(pk__in={h.debit_account_id for h in holds.values()} | {
        h.credit_account_id for h in holds.values()}).values_list("pk", "code"))  # fmt: skip
    accounts = _account_facts(codes.values())
    done = {pk: hold.posted_transaction_id for pk, hold in holds.items() if _already_settled(hold, pk in metadata)}
    to_post = [holds[pk] for pk in sorted(metadata) if pk not in done]
    to_void = [holds[pk] for pk in sorted(set(void)) if pk not in done]
    releases = WritePlan(transaction=None, accounts=list(accounts.values()))
    for hold in to_void:
        _plan_hold_pending(releases, hold, accounts, sign=-1)
    now = timezone.now()
    plans = [_hold_posting_plan(hold, codes, accounts, metadata[hold.pk], now) for hold in to_post]
    posted, _, _ = _post_plans(plans, accounts, releases if to_void else None)
    newly_posted = {hold.pk: posted[_hold_posting_key(hold.pk)] for hold in to_post}
    holds_mark(posted=newly_posted, voided=[hold.pk for hold in to_void])
    return {pk: txn_id for pk, txn_id in done.items() if txn_id is not None} | newly_posted


def _locked_holds(hold_ids: list[int]) -> dict[int, LockedHold]:
    holds = {hold.pk: hold for hold in holds_lock(hold_ids)}
    missing = sorted(set(hold_ids) - holds.keys())
    if missing:
        raise NotFound(f"hold(s) {missing[:10]} do not exist", details={"hold_ids": missing[:100]})
    return holds


def _already_settled(hold: LockedHold, posting: bool) -> bool:
    """Settled as asked already (a replay); a hold settled otherwise is refused."""
    if posting and hold.status == Hold.Status.POSTED and hold.posted_minor == hold.amount_minor:
        return True
    if not posting and hold.status == Hold.Status.VOIDED:
        return True
    _require_pending(hold, Hold.Status.POSTED if posting else Hold.Status.VOIDED)
    return False


def _hold_posting_key(hold_id: int) -> str:
    return f"hold:{hold_id}:post"


def _hold_posting_plan(
    hold: LockedHold, codes: dict[int, str], accounts: dict[str, AccountFacts], metadata: dict[str, Any], now: datetime
) -> WritePlan:
    money = Money(hold.amount_minor, hold.currency)
    return _posting_plan(
        accounts,
        idempotency_key=_hold_posting_key(hold.pk),
        kind=hold.kind,
        legs=[debit(codes[hold.debit_account_id], money), credit(codes[hold.credit_account_id], money)],
        description=hold.description,
        metadata={**hold.metadata, **metadata, "hold_id": hold.pk},
        event_at=None,  # now
        settle_hold=hold,
        now=now,
    )
