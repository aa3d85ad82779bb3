"""Posting to the ledger: legs, retries, balanced transactions and their reversal.

Invariants kept here (and, on PostgreSQL, by the database as well):
- every transaction balances to zero per currency and has at least two legs;
- an entry's currency is its account's currency;
- an account that may not go negative never does, counting pending holds;
- a posting is applied once per idempotency key; the same key with a
  different request is refused (`IdempotencyMismatch`);
- a transaction is reversed at most once, and a reversal is never reversed.

How a write runs: this module validates the request, computes its hash,
picks balance shards and builds a write plan; `ledger.writer` applies it in
one database transaction: claim the idempotency key, update the touched
balance rows in sorted (account, shard) order with a conditional UPDATE that
both row-locks the row and checks the no-negative rule, insert the entries.
Sorted order means two writers never wait on each other in a cycle;
deadlock or serialization failures are still retried a bounded number of
times when this module owns the outermost transaction (`retry_on_conflict`,
which the hold services use too).

Hot accounts are never locked as a whole: a posting updates one of their N
balance shards, picked at random, and skips the no-negative check. A posting
that settles a hold lands on the shards the hold reserved and releases its
pending amounts in the same write.
"""

from __future__ import annotations

import hashlib
import json
import random
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import wraps
from typing import Any, ParamSpec, TypeVar

import structlog
from django.conf import settings
from django.contrib.auth.base_user import AbstractBaseUser
from django.db import DatabaseError, connection, transaction
from django.utils import timezone

from core.errors import (
    AlreadyReversed,
    IdempotencyMismatch,
    InsufficientFunds,
    InvalidRequest,
    InvalidStateTransition,
    LedgerContention,
    NotFound,
)
from core.money import Money
from core.permissions import require_permission
from core.services import audit_record
from ledger.batch import LockedHold
from ledger.models import Hold, Transaction
from ledger.services.accounts import _account_facts, _remember_after_commit, forget_account_facts
from ledger.writer import (
    AccountFacts,
    ShortOfFunds,
    StaleAccountFacts,
    TransactionRow,
    WritePlan,
    apply_plan,
)

log = structlog.get_logger(__name__)

P = ParamSpec("P")
R = TypeVar("R")

RETRYABLE_SQLSTATES = frozenset({"40P01", "40001"})  # deadlock_detected, serialization_failure


# --- inputs -------------------------------------------------------------------


@dataclass(frozen=True)
class Leg:
    """One side of a posting: `amount.minor` > 0 debits the account, < 0 credits it."""

    account_code: str
    amount: Money


def debit(account_code: str, amount: Money) -> Leg:
    return Leg(account_code, amount)


def credit(account_code: str, amount: Money) -> Leg:
    return Leg(account_code, -amount)


# --- retries ------------------------------------------------------------------


def _is_retryable(error: DatabaseError) -> bool:
    return getattr(error.__cause__, "sqlstate", None) in RETRYABLE_SQLSTATES


def retry_on_conflict(func: Callable[P, R] | None = None, *, atomic: bool = True) -> Any:
    """Retry `func` on deadlock, serialization failure or stale account facts.

    `func` runs in its own atomic block, unless `atomic=False` says its single
    write statement is its own transaction. Inside a caller's transaction it
    runs in a savepoint and only stale account facts are retried there: the
    caller owns the retry of everything else.
    """

    def decorate(func: Callable[P, R]) -> Callable[P, R]:
        @wraps(func)
        def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
            nested = connection.in_atomic_block
            attempts = settings.LEDGER_MAX_RETRIES
            for attempt in range(1, attempts + 1):
                try:
                    if not (atomic or nested):
                        return func(*args, **kwargs)
                    with transaction.atomic():
                        return func(*args, **kwargs)
                except StaleAccountFacts:
                    forget_account_facts()
                    log.warning("ledger.stale_account_facts", operation=func.__name__, attempt=attempt)
                except DatabaseError as error:
                    if nested or not _is_retryable(error):
                        raise
                    log.warning("ledger.retry", operation=func.__name__, attempt=attempt, error=str(error))
                    time.sleep(random.uniform(0, 0.005 * 2**attempt))
            raise LedgerContention(f"{func.__name__} gave up after {attempts} attempts")

        return wrapper

    return decorate(func) if func is not None else decorate


# --- applying plans ---------------------------------------------------------------


def _apply(plan: WritePlan, accounts: dict[str, AccountFacts]) -> int | None:
    """Apply a plan, turning a refused balance change into InsufficientFunds."""
    try:
        return apply_plan(plan)
    except ShortOfFunds as short:
        raise _insufficient_funds(short, accounts, [plan]) from None


def _insufficient_funds(
    short: ShortOfFunds, accounts: dict[str, AccountFacts], plans: Sequence[WritePlan]
) -> InsufficientFunds:
    """The error for a refused balance change; `requested_minor` is what the plans take from the account."""
    account = next(a for a in accounts.values() if a.id == short.account_id)
    changes = [change for plan in plans for (account_id, _), change in plan.changes.items() if account_id == account.id]
    requested = -sum(change.posted - change.pending_out for change in changes)
    return InsufficientFunds(
        f"account {account.code} has {short.available_minor} available, the movement needs {requested}",
        details={
            "account": account.code,
            "currency": account.currency,
            "available_minor": short.available_minor,
            "requested_minor": requested,
        },
    )


def _plan_hold_pending(plan: WritePlan, hold: Hold | LockedHold, accounts: dict[str, AccountFacts], sign: int) -> None:
    """Add (sign=+1) or release (sign=-1) a hold's pending amounts on its two shards.

    The hold debits one account and credits the other: for each, that lowers
    the balance (pending out) or raises it (pending in) by its normal direction.
    """
    by_id = {account.id: account for account in accounts.values()}
    for account_id, shard, debit_minor in (
        (hold.debit_account_id, hold.debit_shard, hold.amount_minor),
        (hold.credit_account_id, hold.credit_shard, -hold.amount_minor),
    ):
        if debit_minor * by_id[account_id].normal_sign < 0:
            plan.add_pending(account_id=account_id, shard=shard, out_minor=sign * hold.amount_minor)
        else:
            plan.add_pending(account_id=account_id, shard=shard, in_minor=sign * hold.amount_minor)


# --- posting ------------------------------------------------------------------


def _request_hash(kind: str, legs: Sequence[tuple[str, int, str]], extra: dict[str, Any] | None = None) -> str:
    canonical = json.dumps({"kind": kind, "legs": sorted(legs), **(extra or {})}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def _validate_legs(legs: Sequence[Leg], accounts: dict[str, AccountFacts]) -> None:
    if len(legs) < 2:
        raise InvalidRequest("a transaction needs at least two legs", details={"legs": len(legs)})
    totals: dict[str, int] = defaultdict(int)
    for leg in legs:
        if not isinstance(leg.amount, Money):
            raise InvalidRequest(f"leg amount must be Money, got {type(leg.amount).__name__}")
        if leg.amount.minor == 0:
            raise InvalidRequest(f"zero amount on {leg.account_code}", details={"account": leg.account_code})
        account = accounts[leg.account_code]
        if leg.amount.currency != account.currency:
            raise InvalidRequest(
                f"{leg.amount.currency} leg on {account.currency} account {account.code}",
                user_message="An amount's currency does not match its account's currency.",
                action_required="Post each amount to an account of the same currency.",
                details={"account": account.code, "account_currency": account.currency},
            )
        totals[leg.amount.currency] += leg.amount.minor
    unbalanced = {currency: total for currency, total in totals.items() if total != 0}
    if unbalanced:
        raise InvalidRequest(
            "debits and credits differ",
            user_message="The movement does not balance: debits and credits differ.",
            action_required="Make debits equal credits in each currency.",
            details={"imbalance_minor_by_currency": unbalanced},
        )


def _existing_transaction(idempotency_key: str, request_hash: str) -> Transaction:
    existing = Transaction.objects.get(idempotency_key=idempotency_key)
    if existing.request_hash != request_hash:
        raise IdempotencyMismatch(
            f"ledger key {idempotency_key!r} was already posted with different legs",
            user_message="This movement was already recorded with different amounts or accounts.",
            action_required="Check the existing transaction; do not reuse its reference for another movement.",
            details={"idempotency_key": idempotency_key, "transaction_id": existing.pk},
        )
    return existing


def _post(
    *,
    idempotency_key: str,
    kind: str,
    legs: Sequence[Leg],
    description: str,
    metadata: dict[str, Any] | None,
    event_at: datetime | None,
    reverses_id: int | None = None,
    settle_hold: Hold | None = None,
) -> tuple[Transaction, bool]:
    """Post legs once per key; returns (transaction, created)."""
    accounts = _account_facts(leg.account_code for leg in legs)
    plan = _posting_plan(
        accounts,
        idempotency_key=idempotency_key,
        kind=kind,
        legs=legs,
        description=description,
        metadata=metadata,
        event_at=event_at,
        reverses_id=reverses_id,
        settle_hold=settle_hold,
    )
    assert plan.transaction is not None
    transaction_id = _apply(plan, accounts)
    if transaction_id is None:
        return _existing_transaction(idempotency_key, plan.transaction.request_hash), False
    _remember_after_commit(accounts)
    return _transaction_from_row(transaction_id, plan.transaction), True


def _posting_plan(
    accounts: dict[str, AccountFacts],
    *,
    idempotency_key: str,
    kind: str,
    legs: Sequence[Leg],
    description: str,
    metadata: dict[str, Any] | None,
    event_at: datetime | None,
    reverses_id: int | None = None,
    settle_hold: Hold | LockedHold | None = None,
    now: datetime | None = None,
) -> WritePlan:
    """Validate legs and build the write plan of one posting (`accounts` holds every account of its legs);
    `now` (default: the time now) is its creation time, and its event time unless `event_at` says otherwise."""
    _validate_legs(legs, accounts)
    now = now or timezone.now()
    row = TransactionRow(
        idempotency_key=idempotency_key,
        request_hash=_request_hash(
            kind, [(leg.account_code, leg.amount.minor, leg.amount.currency) for leg in legs], {"reverses": reverses_id}
        ),
        kind=kind,
        description=description,
        metadata=metadata or {},
        event_at=event_at or now,
        created_at=now,
        reverses_id=reverses_id,
    )
    shards = {leg.account_code: accounts[leg.account_code].pick_shard() for leg in legs}
    if settle_hold is not None:  # a hold's legs land on the shards it reserved
        codes = {account.id: code for code, account in accounts.items()}
        shards[codes[settle_hold.debit_account_id]] = settle_hold.debit_shard
        shards[codes[settle_hold.credit_account_id]] = settle_hold.credit_shard
    plan = WritePlan(transaction=row, accounts=list(accounts.values()))
    for leg in legs:
        account = accounts[leg.account_code]
        plan.add_entry(
            account_id=account.id,
            shard=shards[leg.account_code],
            amount_minor=leg.amount.minor,
            currency=leg.amount.currency,
            normal_sign=account.normal_sign,
        )
    if settle_hold is not None:
        _plan_hold_pending(plan, settle_hold, accounts, sign=-1)
    return plan


_TRANSACTION_FIELDS = [field.attname for field in Transaction._meta.concrete_fields]


def _transaction_from_row(transaction_id: int, row: TransactionRow, alias: str | None = None) -> Transaction:
    """The posted transaction, without reading it back (built as a query's row is: several times cheaper)."""
    values = [transaction_id if name == "id" else getattr(row, name) for name in _TRANSACTION_FIELDS]
    return Transaction.from_db(alias or connection.alias, _TRANSACTION_FIELDS, values)


@retry_on_conflict(atomic=False)
def transaction_post(
    *,
    idempotency_key: str,
    kind: str,
    legs: Sequence[Leg],
    description: str = "",
    metadata: dict[str, Any] | None = None,
    event_at: datetime | None = None,
) -> Transaction:
    """Post a balanced transaction exactly once per `idempotency_key`.

    Use a business identifier as the key (e.g. `payout-item:42:settle`). The
    same key with the same kind and legs returns the first transaction; with
    different ones it raises `IdempotencyMismatch`.
    """
    txn, _ = _post(
        idempotency_key=idempotency_key,
        kind=kind,
        legs=legs,
        description=description,
        metadata=metadata,
        event_at=event_at,
    )
    return txn


@retry_on_conflict
def transaction_reverse(*, transaction_id: int, reason: str, actor: AbstractBaseUser | None = None) -> Transaction:
    """Post the mirror image of a transaction, once. Reversals themselves cannot be reversed.

    A staff `actor` needs `ledger.reverse_transaction`; `actor=None` is the system itself.
    """
    if actor is not None:
        require_permission(actor, "ledger.reverse_transaction")
    original = Transaction.objects.select_for_update().filter(pk=transaction_id).first()
    if original is None:
        raise NotFound(f"transaction {transaction_id} does not exist", details={"transaction_id": transaction_id})
    if original.reverses_id is not None:
        raise InvalidStateTransition(
            f"transaction {original.pk} is itself a reversal",
            user_message="A reversal cannot be reversed.",
            action_required="Post a new transaction if the money must move again.",
            details={"transaction_id": original.pk, "reverses": original.reverses_id},
        )
    existing = Transaction.objects.filter(reverses_id=original.pk).values_list("pk", flat=True).first()
    if existing is not None:
        raise AlreadyReversed(
            f"transaction {original.pk} was already reversed by {existing}",
            details={"transaction_id": original.pk, "reversal_id": existing},
        )
    legs = [
        Leg(code, -Money(amount, currency))
        for code, amount, currency in original.entries.order_by("id").values_list(
            "account__code", "amount_minor", "currency"
        )
    ]
    reversal, _ = _post(
        idempotency_key=f"reverse:{original.pk}",
        kind="reversal",
        legs=legs,
        description=f"Reversal of #{original.pk}: {reason}"[:255],
        metadata={"reason": reason},
        event_at=timezone.now(),
        reverses_id=original.pk,
    )
    audit_record(
        actor=actor,
        action="ledger.transaction.reverse",
        obj=original,
        after={"reversal_id": reversal.pk, "reason": reason},
    )
    return reversal
