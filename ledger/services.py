"""The only writer of the ledger.

Invariants kept here (and, on PostgreSQL, by the database as well):
- every transaction balances to zero per currency and has at least two legs;
- an entry's currency is its account's currency;
- an account that may not go negative never does, counting pending holds;
- a posting is applied once per idempotency key; the same key with a
  different request is refused (`IdempotencyMismatch`);
- a transaction is reversed at most once, and a hold is settled at most once.

How a write runs: this module validates the request, computes its hash,
picks balance shards and builds a write plan; `ledger.writer` applies it in
one database transaction: claim the idempotency key, update the touched
balance rows in sorted (account, shard) order with a conditional UPDATE that
both row-locks the row and checks the no-negative rule, insert the entries.
Sorted order means two writers never wait on each other in a cycle;
deadlock or serialization failures are still retried a bounded number of
times when this module owns the outermost transaction.

Hot accounts are never locked as a whole: a posting updates one of their N
balance shards, picked at random, and skips the no-negative check.
"""

from __future__ import annotations

import hashlib
import json
import random
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import wraps
from typing import Any, ParamSpec, TypeVar

import structlog
from django.conf import settings
from django.contrib.auth.base_user import AbstractBaseUser
from django.db import DatabaseError, IntegrityError, connection, transaction
from django.utils import timezone

from core.errors import (
    AlreadyReversed,
    AppError,
    IdempotencyMismatch,
    InsufficientFunds,
    InvalidRequest,
    InvalidStateTransition,
    LedgerContention,
    NotFound,
)
from core.money import Money, MoneyError, validate_currency
from core.permissions import require_permission
from core.services import audit_record
from ledger.models import Account, Balance, Hold, Transaction
from ledger.writer import (
    AccountFacts,
    ShortOfFunds,
    StaleAccountFacts,
    TransactionRow,
    WritePlan,
    apply_plan,
    fetch_account_facts,
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


# --- accounts -----------------------------------------------------------------


PlatformAccount = tuple[str, str, str]  # code, type, name


def platform_accounts(*, currency: str, accounts: Mapping[str, PlatformAccount]) -> dict[str, str]:
    """Platform accounts by role (they may go negative, so they are hot): made on first use, and after
    that one query finds them all. Returns role -> code."""
    codes = [code for code, _, _ in accounts.values()]
    if Account.objects.filter(code__in=codes).count() < len(codes):
        for code, type_, name in accounts.values():
            account_create(code=code, name=name, type=type_, currency=currency, allow_negative=True)
    return {role: code for role, (code, _, _) in accounts.items()}


def account_create(
    *,
    code: str,
    name: str,
    type: str,
    currency: str,
    allow_negative: bool = False,
    owner_type: str = "",
    owner_id: str = "",
) -> Account:
    """Create an account and its balance rows; an existing identical account is returned as is."""
    try:
        validate_currency(currency)
    except MoneyError as error:
        raise InvalidRequest(str(error), details={"currency": currency}) from error
    if type not in Account.Type.values:
        raise InvalidRequest(f"unknown account type {type!r}", details={"allowed": Account.Type.values})
    shards = settings.LEDGER_HOT_ACCOUNT_SHARDS if allow_negative else 1
    with transaction.atomic():
        account, created = Account.objects.get_or_create(
            code=code,
            defaults={
                "name": name,
                "type": type,
                "currency": currency,
                "allow_negative": allow_negative,
                "balance_shards": shards,
                "owner_type": owner_type,
                "owner_id": owner_id,
            },
        )
        if not created:
            if (account.type, account.currency, account.allow_negative) != (type, currency, allow_negative):
                raise InvalidRequest(
                    f"account {code} exists with a different type, currency or sign rule",
                    user_message="An account with this code already exists with other settings.",
                    action_required="Use another code, or the existing account's settings.",
                    details={"code": code},
                )
            return account
        Balance.objects.bulk_create(
            Balance(account=account, shard=shard, allow_negative=allow_negative) for shard in range(shards)
        )
    return account


# Facts of accounts with committed entries. Such an account can never be deleted
# (entries are append-only) and its facts never change (PostgreSQL refuses), so
# each process remembers them after a commit and skips reading them again.
# ledger_post re-checks them in the same statement all the same: a stale one is
# refused, forgotten and the write retried (see retry_on_conflict).
_remembered_facts: dict[str, AccountFacts] = {}


def forget_account_facts() -> None:
    _remembered_facts.clear()


def _remember_after_commit(accounts: dict[str, AccountFacts]) -> None:
    def remember() -> None:
        if len(_remembered_facts) > settings.LEDGER_REMEMBERED_ACCOUNTS:
            _remembered_facts.clear()
        _remembered_facts.update(accounts)

    transaction.on_commit(remember)


def _account_facts(codes: Iterable[str]) -> dict[str, AccountFacts]:
    wanted = set(codes)
    found = {code: _remembered_facts[code] for code in wanted if code in _remembered_facts}
    if len(found) < len(wanted):
        found.update((facts.code, facts) for facts in fetch_account_facts(sorted(wanted - found.keys())))
    missing = sorted(wanted - found.keys())
    if missing:
        raise NotFound(
            f"unknown ledger account(s): {', '.join(missing)}",
            user_message="A ledger account in this movement does not exist.",
            action_required="Create the account first, or correct the account code.",
            details={"missing_accounts": missing},
        )
    return found


# --- applying plans ---------------------------------------------------------------


def _apply(plan: WritePlan, accounts: dict[str, AccountFacts]) -> int | None:
    """Apply a plan, turning a refused balance change into InsufficientFunds."""
    try:
        return apply_plan(plan)
    except ShortOfFunds as short:
        account = next(a for a in accounts.values() if a.id == short.account_id)
        changes = [change for (account_id, _), change in plan.changes.items() if account_id == account.id]
        requested = -sum(change.posted - change.pending_out for change in changes)
        raise InsufficientFunds(
            f"account {account.code} has {short.available_minor} available, the movement needs {requested}",
            details={
                "account": account.code,
                "currency": account.currency,
                "available_minor": short.available_minor,
                "requested_minor": requested,
            },
        ) from None


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
    _validate_legs(legs, accounts)
    row = TransactionRow(
        idempotency_key=idempotency_key,
        request_hash=_request_hash(
            kind, [(leg.account_code, leg.amount.minor, leg.amount.currency) for leg in legs], {"reverses": reverses_id}
        ),
        kind=kind,
        description=description,
        metadata=metadata or {},
        event_at=event_at or timezone.now(),
        created_at=timezone.now(),
        reverses_id=reverses_id,
    )
    shards = {code: account.pick_shard() for code, account in accounts.items()}
    if settle_hold is not None:  # a hold's legs land on the shards it reserved
        shards[settle_hold.debit_account.code] = settle_hold.debit_shard
        shards[settle_hold.credit_account.code] = settle_hold.credit_shard
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
    transaction_id = _apply(plan, accounts)
    if transaction_id is None:
        return _existing_transaction(idempotency_key, row.request_hash), False
    _remember_after_commit(accounts)
    return _transaction_from_row(transaction_id, row), True


def _transaction_from_row(transaction_id: int, row: TransactionRow) -> Transaction:
    txn = Transaction(
        id=transaction_id,
        idempotency_key=row.idempotency_key,
        request_hash=row.request_hash,
        kind=row.kind,
        description=row.description,
        metadata=row.metadata,
        event_at=row.event_at,
        created_at=row.created_at,
        reverses_id=row.reverses_id,
    )
    txn._state.adding = False
    txn._state.db = connection.alias
    return txn


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


# --- holds --------------------------------------------------------------------


def _plan_hold_pending(plan: WritePlan, hold: Hold, accounts: dict[str, AccountFacts], sign: int) -> None:
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
    Hold.objects.bulk_create(new, batch_size=2000)
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


def _same_hold_or_mismatch(existing: Hold, request_hash: str) -> Hold:
    if existing.request_hash != request_hash:
        raise IdempotencyMismatch(
            f"hold key {existing.idempotency_key!r} was already used for a different reservation",
            user_message="This reservation reference was already used with other amounts or accounts.",
            action_required="Check the existing hold; do not reuse its reference.",
            details={"idempotency_key": existing.idempotency_key, "hold_id": existing.pk},
        )
    return existing


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


def _require_pending(hold: Hold, target: str) -> None:
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
    due = Hold.objects.filter(status=Hold.Status.PENDING, expires_at__lte=now or timezone.now())
    expired = 0
    for hold_id in due.order_by("expires_at", "pk").values_list("pk", flat=True).iterator(chunk_size=500):
        try:
            hold_expire(hold_id=hold_id)
            expired += 1
        except InvalidStateTransition:
            continue  # settled meanwhile by someone else
        except AppError as error:
            log.error("ledger.hold_expire_failed", hold_id=hold_id, code=error.code, error=error.message)
    return expired
