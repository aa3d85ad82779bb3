"""Ledger accounts: creating them, the platform's own accounts, and the account facts a posting reads.

Invariants kept here:
- an account is created with its balance rows in one transaction: one row, or `LEDGER_HOT_ACCOUNT_SHARDS` rows
  for an account that may go negative (a hot account, never locked as a whole: each posting updates one shard);
- creating an account again with the same type, currency and sign rule returns it as is; with different ones
  it is refused (`InvalidRequest`);
- platform accounts (by role) may go negative, so they are hot;
- an account's facts (id, currency, sign rule, shards) never change once it has entries, so each process
  remembers them after a commit; a posting re-checks them in the same statement, and a stale one is refused,
  forgotten and the write retried (`ledger.services.posting.retry_on_conflict`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from django.conf import settings
from django.db import transaction

from core.errors import InvalidRequest, NotFound
from core.money import MoneyError, validate_currency
from ledger.models import Account, Balance
from ledger.writer import AccountFacts, fetch_account_facts

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
