"""Reads of the ledger. Balances come from balance rows and entries' balance-after,
never from summing an account's whole history."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime

from django.contrib.auth.base_user import AbstractBaseUser
from django.contrib.auth.models import AnonymousUser
from django.db.models import OuterRef, Prefetch, QuerySet, Subquery, Sum
from django.db.models.functions import Coalesce

from core.errors import NotFound
from core.money import Money
from ledger.models import Account, Balance, Entry, Transaction


@dataclass(frozen=True)
class AccountBalance:
    """An account's balance in its normal direction."""

    posted: Money
    pending_out: Money
    pending_in: Money

    @property
    def available(self) -> Money:
        """What can still leave the account: posted minus pending holds that will lower it."""
        return self.posted - self.pending_out


def account_get(code: str) -> Account:
    account = Account.objects.filter(code=code).first()
    if account is None:
        raise NotFound(f"ledger account {code!r} does not exist", details={"account": code})
    return account


def accounts_with_balances() -> QuerySet[Account]:
    """Accounts annotated with posted, pending_out and pending_in totals over their shards."""
    return Account.objects.annotate(
        posted_minor=Coalesce(Sum("balances__posted_minor"), 0),
        pending_out_minor=Coalesce(Sum("balances__pending_out_minor"), 0),
        pending_in_minor=Coalesce(Sum("balances__pending_in_minor"), 0),
    )


def accounts_visible_to(user: AbstractBaseUser | AnonymousUser) -> QuerySet[Account]:
    """Finance staff with ledger.view_account see every account; anyone else only the accounts they own."""
    accounts = accounts_with_balances()
    if user.is_staff and user.has_perm("ledger.view_account"):
        return accounts
    return accounts.filter(owner_type="user", owner_id=str(user.pk))


def transaction_with_entries(transaction_id: int) -> Transaction:
    entries = Entry.objects.select_related("account").order_by("id")
    return Transaction.objects.prefetch_related(Prefetch("entries", queryset=entries)).get(pk=transaction_id)


def account_balance(account: Account) -> AccountBalance:
    totals = Balance.objects.filter(account=account).aggregate(
        posted=Coalesce(Sum("posted_minor"), 0),
        pending_out=Coalesce(Sum("pending_out_minor"), 0),
        pending_in=Coalesce(Sum("pending_in_minor"), 0),
    )
    return AccountBalance(
        posted=Money(totals["posted"], account.currency),
        pending_out=Money(totals["pending_out"], account.currency),
        pending_in=Money(totals["pending_in"], account.currency),
    )


def account_balance_at(account: Account, at: datetime) -> Money:
    """Posted balance as recorded at `at`: per shard, the balance-after of its last entry by then."""
    last_entry = Entry.objects.filter(account=account, shard=OuterRef("shard"), created_at__lte=at).order_by(
        "-created_at", "-version_after"
    )
    per_shard = Balance.objects.filter(account=account).annotate(
        balance_then=Subquery(last_entry.values("balance_after_minor")[:1])
    )
    total = sum(balance or 0 for balance in per_shard.values_list("balance_then", flat=True))
    return Money(total, account.currency)


@dataclass(frozen=True)
class StatementLine:
    entry_id: int
    transaction_id: int
    created_at: datetime
    event_at: datetime
    kind: str
    description: str
    amount: Money  # in the account's normal direction: positive raises the balance
    balance_after: Money


@dataclass(frozen=True)
class Statement:
    account: Account
    since: datetime
    until: datetime
    opening: Money
    closing: Money
    lines: list[StatementLine]


def _statement_lines(account: Account, since: datetime, until: datetime, opening: Money) -> Iterator[StatementLine]:
    entries = (
        Entry.objects.filter(account=account, created_at__gt=since, created_at__lte=until)
        .select_related("transaction")
        .order_by("created_at", "id")
    )
    balance = opening
    for entry in entries.iterator(chunk_size=2000):
        amount = Money(entry.amount_minor * account.normal_sign, account.currency)
        balance += amount
        yield StatementLine(
            entry_id=entry.pk,
            transaction_id=entry.transaction_id,
            created_at=entry.created_at,
            event_at=entry.transaction.event_at,
            kind=entry.transaction.kind,
            description=entry.transaction.description,
            amount=amount,
            balance_after=balance,
        )


def account_statement(account: Account, *, since: datetime, until: datetime) -> Statement:
    """Opening balance at `since`, every entry recorded in (since, until], closing balance."""
    opening = account_balance_at(account, since)
    lines = list(_statement_lines(account, since, until, opening))
    closing = lines[-1].balance_after if lines else opening
    return Statement(account=account, since=since, until=until, opening=opening, closing=closing, lines=lines)
