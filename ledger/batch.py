"""Applies a batch of ledger write plans in one statement. Only `ledger.services` calls this.

A batch is many transactions' plans (`ledger.writer.WritePlan`, each with its transaction row), in
the order of their keys, plus changes that belong to no transaction (a voided hold's pending
amounts). Both writers apply it the same way, as `ledger.writer` applies one plan:

1. claim every key; a key already used claims nothing, and its changes and entries are skipped;
2. add up, per balance shard, the changes of the claimed transactions and the changes of no
   transaction (those first), and update each touched shard once, in sorted (account, shard) order,
   with a conditional UPDATE that row-locks it and refuses to take an account that may not go
   negative below zero at any step of the batch (counting pending holds), not only at its end;
3. insert the claimed transactions' entries with each shard's running balance and version, in order.

On PostgreSQL the batch goes to the `ledger_post_many` function (migration 0006) as one prepared
statement; elsewhere (the SQLite demo) the same steps run here in Python. Either way the caller's
transaction holds it: the batch commits, or rolls back, as a whole.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import psycopg
from django.db import DatabaseError, connection, transaction
from django.db.models import F
from django.utils import timezone

from ledger.models import Entry, Hold
from ledger.writer import (
    INSUFFICIENT_FUNDS_SQLSTATE,
    STALE_ACCOUNT_FACTS_SQLSTATE,
    AccountFacts,
    ShardChange,
    ShortOfFunds,
    StaleAccountFacts,
    WritePlan,
    _check_facts_in_python,
    _claim_in_python,
    _fetch_prepared,
    _int_array,
    entries_after,
    shard_update,
)

CHUNK = 1000  # rows per `IN (...)` list on databases without arrays: well inside their limits on parameters


@dataclass
class BatchPlan:
    """Many transactions' plans (each with its row, keys unique, in key order) and changes of no transaction."""

    accounts: list[AccountFacts]  # every account the batch touches, re-checked before writing
    transactions: list[WritePlan] = field(default_factory=list)
    releases: WritePlan | None = None  # pending amounts of voided holds: no transaction, no entries


def apply_batch(batch: BatchPlan) -> list[int | None]:
    """Apply `batch`; return each transaction's new id in order, None where its key was already used.

    Raises ShortOfFunds when an account that may not go negative would, at any step of the batch.
    """
    if connection.vendor == "postgresql":
        return _apply_on_postgres(batch)
    with transaction.atomic():
        return _apply_in_python(batch)


def _changes(batch: BatchPlan) -> Iterator[tuple[int, tuple[int, int], ShardChange]]:
    """(position, shard, change): position 0 for changes of no transaction, else 1-based in the batch."""
    if batch.releases is not None:
        for key, change in batch.releases.changes.items():
            yield 0, key, change
    for position, plan in enumerate(batch.transactions, start=1):
        for key, change in plan.changes.items():
            yield position, key, change


# --- PostgreSQL: one call of ledger_post_many -----------------------------------------

# Lists of strings and times go in binary (%b): psycopg's text format escapes every element, many times slower.
_LEDGER_POST_MANY_SQL = (
    "SELECT ledger_post_many(%b::text[], %b::text[], %b::text[], %b::text[], %b::text[], %b::timestamptz[],"
    " %s::timestamptz, %s::bigint[],"
    " %s::int[], %s::bigint[], %s::int[], %s::bigint[], %s::bigint[], %s::bigint[], %s::int[],"
    " %s::int[], %s::bigint[], %s::int[], %s::bigint[], %b::text[], %s::bigint[],"
    " %s::bigint[], %s::text[], %s::text[], %s::text[], %s::int[])"
)


def _transaction_params(batch: BatchPlan) -> list[Any]:
    rows = [plan.transaction for plan in batch.transactions if plan.transaction is not None]
    return [
        [row.idempotency_key for row in rows],
        [row.request_hash for row in rows],
        [row.kind for row in rows],
        [row.description for row in rows],
        [json.dumps(row.metadata) for row in rows],
        [row.event_at for row in rows],
        timezone.now(),
        "{" + ",".join("NULL" if row.reverses_id is None else str(int(row.reverses_id)) for row in rows) + "}",
    ]


def _change_params(batch: BatchPlan) -> list[Any]:
    changes = list(_changes(batch))
    return [
        _int_array([position for position, _, _ in changes]),
        _int_array([account_id for _, (account_id, _), _ in changes]),
        _int_array([shard for _, (_, shard), _ in changes]),
        _int_array([change.posted for *_, change in changes]),
        _int_array([change.pending_out for *_, change in changes]),
        _int_array([change.pending_in for *_, change in changes]),
        _int_array([change.entries for *_, change in changes]),
    ]


def _entry_params(batch: BatchPlan) -> list[Any]:
    entries = [(position, entry) for position, plan in enumerate(batch.transactions, 1) for entry in plan.entries]
    return [
        _int_array([position for position, _ in entries]),
        _int_array([entry.account_id for _, entry in entries]),
        _int_array([entry.shard for _, entry in entries]),
        _int_array([entry.amount_minor for _, entry in entries]),
        [entry.currency for _, entry in entries],
        _int_array([entry.delta for _, entry in entries]),
    ]


def _account_params(batch: BatchPlan) -> list[Any]:
    return [
        _int_array([account.id for account in batch.accounts]),
        [account.code for account in batch.accounts],
        [account.currency for account in batch.accounts],
        [account.type for account in batch.accounts],
        _int_array([account.shards for account in batch.accounts]),
    ]


def _apply_on_postgres(batch: BatchPlan) -> list[int | None]:
    with _ledger_refusals():
        rows = _fetch_prepared(_LEDGER_POST_MANY_SQL, _batch_params(batch))
    return list(rows[0][0])


def _batch_params(batch: BatchPlan) -> list[Any]:
    return _transaction_params(batch) + _change_params(batch) + _entry_params(batch) + _account_params(batch)


@contextmanager
def _ledger_refusals() -> Iterator[None]:
    """The function's refusals as this module's exceptions: LDG01 ShortOfFunds, LDG03 StaleAccountFacts."""
    try:
        yield
    except DatabaseError as error:
        cause = error.__cause__
        sqlstate = cause.sqlstate if isinstance(cause, psycopg.Error) else None
        if sqlstate == INSUFFICIENT_FUNDS_SQLSTATE:
            detail = json.loads(cause.diag.message_detail or "{}")  # type: ignore[union-attr]
            raise ShortOfFunds(detail["account_id"], detail["available_minor"]) from None
        if sqlstate == STALE_ACCOUNT_FACTS_SQLSTATE:
            raise StaleAccountFacts(str(cause)) from None
        raise


# --- elsewhere: the same steps in Python ------------------------------------------


def _shard_totals(batch: BatchPlan, claimed: list[int | None]) -> dict[tuple[int, int], tuple[ShardChange, int]]:
    """Per shard: the sum of the applied changes, and the lowest running change of its available balance."""
    totals: dict[tuple[int, int], ShardChange] = defaultdict(ShardChange)
    running: dict[tuple[int, int], int] = defaultdict(int)
    lowest: dict[tuple[int, int], int] = defaultdict(int)
    for position, key, change in _changes(batch):
        if position and claimed[position - 1] is None:
            continue
        total = totals[key]
        total.posted += change.posted
        total.pending_out += change.pending_out
        total.pending_in += change.pending_in
        total.entries += change.entries
        running[key] += change.posted - change.pending_out
        lowest[key] = min(lowest[key], running[key])
    return {key: (totals[key], lowest[key]) for key in totals}


def _update_shards_in_python(
    totals: dict[tuple[int, int], tuple[ShardChange, int]],
) -> dict[tuple[int, int], list[int]]:
    """Update each shard once, in sorted order; return each shard's [balance, version] before the batch."""
    with connection.cursor() as cursor:
        return {
            (account_id, shard): shard_update(
                cursor, account_id, shard, change, (lowest, 0)
            )  # the batch's lowest point
            for (account_id, shard), (change, lowest) in sorted(totals.items())
        }


def _apply_in_python(batch: BatchPlan) -> list[int | None]:
    _check_facts_in_python(WritePlan(transaction=None, accounts=batch.accounts))
    claimed = [_claim_in_python(plan.transaction) for plan in batch.transactions if plan.transaction is not None]
    running = _update_shards_in_python(_shard_totals(batch, claimed))
    created_at = timezone.now()  # after the row locks: per shard, time order follows version order
    entries = [
        entry
        for transaction_id, plan in zip(claimed, batch.transactions, strict=True)
        if transaction_id is not None
        for entry in entries_after(transaction_id, plan.entries, running, created_at)
    ]
    Entry.objects.bulk_create(entries, batch_size=1000)
    return claimed


# --- the holds a batch settles --------------------------------------------------------------
# On PostgreSQL one statement each, the ids as one array; elsewhere the ORM, CHUNK ids at a time.

_LOCK_HOLDS_SQL = (
    "SELECT id, status, debit_account_id, debit_shard, credit_account_id, credit_shard, amount_minor, currency,"
    " posted_minor, posted_transaction_id, kind, description, metadata"
    " FROM ledger_hold WHERE id = ANY(%s::bigint[]) ORDER BY id FOR UPDATE"
)


@dataclass(slots=True)
class LockedHold:
    """What settling reads of a hold (a model instance costs several times more to build, per hold)."""

    pk: int
    status: str
    debit_account_id: int
    debit_shard: int
    credit_account_id: int
    credit_shard: int
    amount_minor: int
    currency: str
    posted_minor: int
    posted_transaction_id: int | None
    kind: str
    description: str
    metadata: dict[str, Any]


_LOCKED_FIELDS = [name if name != "pk" else "id" for name in LockedHold.__dataclass_fields__]

_MARK_POSTED_SQL = """
UPDATE ledger_hold
   SET status = %s, posted_minor = amount_minor, posted_transaction_id = posted.transaction_id, updated_at = %s
  FROM unnest(%s::bigint[], %s::bigint[]) AS posted (hold_id, transaction_id)
 WHERE ledger_hold.id = posted.hold_id
"""
_MARK_VOIDED_SQL = "UPDATE ledger_hold SET status = %s, updated_at = %s WHERE id = ANY(%s::bigint[])"


def _chunks(values: list[int]) -> Iterator[list[int]]:
    for start in range(0, len(values), CHUNK):
        yield values[start : start + CHUNK]


def holds_lock(hold_ids: list[int]) -> list[LockedHold]:
    """The holds with these ids, row-locked in id order (ids that do not exist are left out)."""
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute(_LOCK_HOLDS_SQL, [_int_array(sorted(hold_ids))])
            rows = cursor.fetchall()
        return [LockedHold(*row[:-1], json.loads(row[-1]) if isinstance(row[-1], str) else row[-1]) for row in rows]
    locked = Hold.objects.select_for_update().order_by("pk")
    return [
        LockedHold(*row)
        for ids in _chunks(sorted(hold_ids))
        for row in locked.filter(pk__in=ids).values_list(*_LOCKED_FIELDS)
    ]


def holds_mark(*, posted: dict[int, int], voided: list[int]) -> None:
    """Record settled holds: posted in full ({hold id: transaction id}) or voided."""
    now = timezone.now()
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            if posted:
                ids = [_int_array(list(posted)), _int_array(list(posted.values()))]
                cursor.execute(_MARK_POSTED_SQL, [Hold.Status.POSTED, now, *ids])
            if voided:
                cursor.execute(_MARK_VOIDED_SQL, [Hold.Status.VOIDED, now, _int_array(voided)])
        return
    for hold_id, transaction_id in posted.items():  # the SQLite demo settles a few holds at a time
        Hold.objects.filter(pk=hold_id).update(
            status=Hold.Status.POSTED,
            posted_minor=F("amount_minor"),
            posted_transaction_id=transaction_id,
            updated_at=now,
        )
    for ids in _chunks(voided):
        Hold.objects.filter(pk__in=ids).update(status=Hold.Status.VOIDED, updated_at=now)
