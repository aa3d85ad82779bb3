"""Applies a ledger write plan to the database. Only `ledger.services` calls this.

A plan says which transaction row to claim (if any), how each touched balance
shard changes (posted, pending out, pending in, number of entries) and which
entries to insert. Both writers apply it the same way:

1. claim the idempotency key: insert the transaction row, or stop if the key
   was already used;
2. update the balance rows in sorted (account, shard) order with a
   conditional UPDATE that row-locks each row and refuses to take an account
   that may not go negative below zero (counting pending holds);
3. insert the entries with each shard's running balance and version.

On PostgreSQL the plan goes to the `ledger_post` function (migration 0004) as
one prepared statement: one round trip per posting, its own transaction when
the caller has none. Elsewhere (the SQLite demo) the same steps run here in
Python inside one atomic block. The service tests run on both.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import psycopg
from django.db import DatabaseError, connection, transaction
from django.utils import timezone

from ledger.models import Account, Entry

INSUFFICIENT_FUNDS_SQLSTATE = "LDG01"
STALE_ACCOUNT_FACTS_SQLSTATE = "LDG03"


class ShortOfFunds(Exception):
    """A balance row refused the change: its account may not go below zero."""

    def __init__(self, account_id: int, available_minor: int) -> None:
        super().__init__(f"account {account_id} has {available_minor} available")
        self.account_id = account_id
        self.available_minor = available_minor


class StaleAccountFacts(Exception):
    """The account facts in a plan no longer match the accounts table; nothing was written."""


@dataclass(frozen=True)
class AccountFacts:
    """What a writer needs to know of an account; it never changes once the account exists."""

    id: int
    code: str
    currency: str
    type: str
    allow_negative: bool
    shards: int

    @property
    def normal_sign(self) -> int:
        return 1 if self.type in Account.DEBIT_NORMAL_TYPES else -1

    def pick_shard(self) -> int:
        return random.randrange(self.shards) if self.shards > 1 else 0


@dataclass
class ShardChange:
    """What one write does to one balance shard, in the account's normal direction."""

    posted: int = 0
    pending_out: int = 0
    pending_in: int = 0
    entries: int = 0


@dataclass(frozen=True)
class PlannedEntry:
    account_id: int
    shard: int
    amount_minor: int  # debit positive
    currency: str
    delta: int  # the change to the shard's balance, in the account's normal direction


@dataclass(frozen=True)
class TransactionRow:
    idempotency_key: str
    request_hash: str
    kind: str
    description: str
    metadata: dict[str, Any]
    event_at: datetime
    created_at: datetime
    reverses_id: int | None


@dataclass
class WritePlan:
    transaction: TransactionRow | None
    accounts: list[AccountFacts]  # every account the plan touches, re-checked before writing
    changes: dict[tuple[int, int], ShardChange] = field(default_factory=dict)
    entries: list[PlannedEntry] = field(default_factory=list)

    def add_entry(self, *, account_id: int, shard: int, amount_minor: int, currency: str, normal_sign: int) -> None:
        delta = amount_minor * normal_sign
        change = self.changes.setdefault((account_id, shard), ShardChange())
        change.posted += delta
        change.entries += 1
        self.entries.append(PlannedEntry(account_id, shard, amount_minor, currency, delta))

    def add_pending(self, *, account_id: int, shard: int, out_minor: int = 0, in_minor: int = 0) -> None:
        change = self.changes.setdefault((account_id, shard), ShardChange())
        change.pending_out += out_minor
        change.pending_in += in_minor

    def sorted_keys(self) -> list[tuple[int, int]]:
        return sorted(self.changes)


def apply_plan(plan: WritePlan) -> int | None:
    """Apply `plan`; return the new transaction id, or None if its key was already used or it has none.

    Raises ShortOfFunds when an account that may not go negative would.
    """
    if connection.vendor == "postgresql":
        return _apply_on_postgres(plan)
    with transaction.atomic():
        return _apply_in_python(plan)


_ACCOUNT_ROWS_SQL = (
    "SELECT id, code, currency, type, allow_negative, balance_shards FROM ledger_account WHERE code = ANY(%s)"
)


def fetch_account_facts(codes: list[str]) -> list[AccountFacts]:
    """The facts of the accounts with these codes (unknown codes are left out)."""
    if connection.vendor == "postgresql":
        rows = _fetch_prepared(_ACCOUNT_ROWS_SQL.replace("%s", "%s::text[]"), [codes])
    else:
        with connection.cursor() as cursor:
            cursor.execute(_ACCOUNT_ROWS_SQL.replace("= ANY(%s)", f"IN ({', '.join(['%s'] * len(codes))})"), codes)
            rows = cursor.fetchall()
    return [AccountFacts(pk, code, currency, kind, bool(hot), shards) for pk, code, currency, kind, hot, shards in rows]


# --- PostgreSQL: one call of ledger_post -----------------------------------------

_LEDGER_POST_SQL = (
    "SELECT ledger_post(%s::text, %s::text, %s::text, %s::text, %s::jsonb, %s::timestamptz, %s::timestamptz,"
    " %s::bigint, %s::bigint[], %s::int[], %s::bigint[], %s::bigint[], %s::bigint[], %s::int[],"
    " %s::int[], %s::bigint[], %s::text[], %s::bigint[],"
    " %s::bigint[], %s::text[], %s::text[], %s::text[], %s::int[])"
)


def _int_array(values: list[int]) -> str:
    """A PostgreSQL array literal of integers: cheaper to send than a generic list."""
    return "{" + ",".join(map(str, map(int, values))) + "}"


def _ledger_post_params(plan: WritePlan) -> list[Any]:
    row = plan.transaction
    keys = plan.sorted_keys()
    position = {key: index + 1 for index, key in enumerate(keys)}  # 1-based, as in SQL arrays
    changes = [plan.changes[key] for key in keys]
    return [
        row and row.idempotency_key,
        row and row.request_hash,
        row and row.kind,
        row and row.description,
        row and json.dumps(row.metadata),
        row and row.event_at,
        row and row.created_at,
        row and row.reverses_id,
        _int_array([account_id for account_id, _ in keys]),
        _int_array([shard for _, shard in keys]),
        _int_array([change.posted for change in changes]),
        _int_array([change.pending_out for change in changes]),
        _int_array([change.pending_in for change in changes]),
        _int_array([change.entries for change in changes]),
        _int_array([position[entry.account_id, entry.shard] for entry in plan.entries]),
        _int_array([entry.amount_minor for entry in plan.entries]),
        [entry.currency for entry in plan.entries],
        _int_array([entry.delta for entry in plan.entries]),
        _int_array([account.id for account in plan.accounts]),
        [account.code for account in plan.accounts],
        [account.currency for account in plan.accounts],
        [account.type for account in plan.accounts],
        _int_array([account.shards for account in plan.accounts]),
    ]


def _fetch_prepared(sql: str, params: list[Any]) -> list[tuple[Any, ...]]:
    """Run `sql` on a server-side-binding cursor, prepared once per connection."""
    connection.ensure_connection()
    with connection.wrap_database_errors, psycopg.Cursor(connection.connection) as cursor:
        cursor.execute(sql, params, prepare=True)
        return cursor.fetchall()


def _apply_on_postgres(plan: WritePlan) -> int | None:
    try:
        rows = _fetch_prepared(_LEDGER_POST_SQL, _ledger_post_params(plan))
    except DatabaseError as error:
        cause = error.__cause__
        sqlstate = cause.sqlstate if isinstance(cause, psycopg.Error) else None
        if sqlstate == INSUFFICIENT_FUNDS_SQLSTATE:
            detail = json.loads(cause.diag.message_detail or "{}")  # type: ignore[union-attr]
            raise ShortOfFunds(detail["account_id"], detail["available_minor"]) from None
        if sqlstate == STALE_ACCOUNT_FACTS_SQLSTATE:
            raise StaleAccountFacts(str(cause)) from None
        raise
    return rows[0][0]


# --- elsewhere: the same steps in Python ------------------------------------------

_INSERT_TRANSACTION_SQL = """
INSERT INTO ledger_transaction
    (idempotency_key, request_hash, kind, description, metadata, event_at, created_at, reverses_id)
VALUES (%s, %s, %s, %s, %s, %s, %s, %s)
ON CONFLICT (idempotency_key) DO NOTHING
RETURNING id
"""

_UPDATE_BALANCE_SQL = """
UPDATE ledger_balance
   SET posted_minor = posted_minor + %s,
       pending_out_minor = pending_out_minor + %s,
       pending_in_minor = pending_in_minor + %s,
       version = version + %s
 WHERE account_id = %s AND shard = %s
   AND (allow_negative OR posted_minor + %s - (pending_out_minor + %s) >= 0)
RETURNING posted_minor, version
"""

_AVAILABLE_SQL = "SELECT SUM(posted_minor - pending_out_minor) FROM ledger_balance WHERE account_id = %s"


def _claim_in_python(row: TransactionRow) -> int | None:
    ops = connection.ops
    with connection.cursor() as cursor:
        cursor.execute(
            _INSERT_TRANSACTION_SQL,
            [
                row.idempotency_key,
                row.request_hash,
                row.kind,
                row.description,
                json.dumps(row.metadata),
                ops.adapt_datetimefield_value(row.event_at),
                ops.adapt_datetimefield_value(row.created_at),
                row.reverses_id,
            ],
        )
        claimed = cursor.fetchone()
    return claimed[0] if claimed else None


def _update_balances_in_python(plan: WritePlan) -> dict[tuple[int, int], list[int]]:
    """Apply each shard change; return each shard's [balance, version] before this write's entries."""
    before: dict[tuple[int, int], list[int]] = {}
    with connection.cursor() as cursor:
        for key in plan.sorted_keys():
            change = plan.changes[key]
            before[key] = shard_update(cursor, *key, change, (change.posted, change.pending_out))
    return before


def shard_update(cursor: Any, account_id: int, shard: int, change: Any, floor: tuple[int, int]) -> list[int]:
    """Add `change` to one balance shard unless the account would go below its floor (the no-negative condition,
    checked with `floor`'s posted and pending-out amounts); the shard's [balance, version] before it."""
    cursor.execute(
        _UPDATE_BALANCE_SQL,
        [*(change.posted, change.pending_out, change.pending_in, change.entries), *(account_id, shard), *floor],
    )
    after = cursor.fetchone()
    if after is None:
        cursor.execute(_AVAILABLE_SQL, [account_id])
        (available,) = cursor.fetchone()
        if available is None:
            raise RuntimeError(f"ledger account {account_id} has no balance row for shard {shard}")
        raise ShortOfFunds(account_id, available)
    return [after[0] - change.posted, after[1] - change.entries]


def _check_facts_in_python(plan: WritePlan) -> None:
    current = {facts.id: facts for facts in fetch_account_facts([facts.code for facts in plan.accounts])}
    if any(current.get(facts.id) != facts for facts in plan.accounts):
        raise StaleAccountFacts("account facts in the plan are out of date")


def _apply_in_python(plan: WritePlan) -> int | None:
    _check_facts_in_python(plan)
    transaction_id = _claim_in_python(plan.transaction) if plan.transaction else None
    if plan.transaction and transaction_id is None:
        return None
    running = _update_balances_in_python(plan)
    if transaction_id is None:
        return None
    created_at = timezone.now()  # after the row locks: per shard, time order follows version order
    Entry.objects.bulk_create(entries_after(transaction_id, plan.entries, running, created_at))
    return transaction_id


def entries_after(
    transaction_id: int,
    planned_entries: list[PlannedEntry],
    running: dict[tuple[int, int], list[int]],
    created_at: datetime,
) -> list[Entry]:
    """The entry rows of one transaction, each with its shard's balance and version after it; `running` holds
    each shard's [balance, version] so far and is moved forward entry by entry."""
    entries = []
    for planned in planned_entries:
        shard_state = running[planned.account_id, planned.shard]
        shard_state[0] += planned.delta
        shard_state[1] += 1
        entries.append(
            Entry(
                transaction_id=transaction_id,
                account_id=planned.account_id,
                shard=planned.shard,
                amount_minor=planned.amount_minor,
                currency=planned.currency,
                balance_after_minor=shard_state[0],
                version_after=shard_state[1],
                created_at=created_at,
            )
        )
    return entries
