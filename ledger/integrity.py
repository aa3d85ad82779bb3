"""The ledger integrity check: recompute from the entries what everything else claims.

Read-only. Every check is one SQL statement that returns only the rows that
disagree, so the work (sums, counts, window functions) stays in the database
however long the journal grows, and Python only ever holds the differences.
One statement reads one snapshot, so a check never compares a balance row with
entries from a different moment, even while postings continue.

What is checked, with the stable finding codes alerts and dashboards key on:
- `transaction_unbalanced`: a transaction's entries do not sum to zero in a currency;
- `transaction_too_few_entries`: a transaction has fewer than two entries;
- `entry_currency_mismatch`: an entry's currency is not its account's;
- `balance_posted_mismatch`: a balance row's posted amount is not the sum of its
  shard's entries in the account's normal direction (`Account.normal_sign`);
- `balance_version_mismatch`: a balance row's version is not its shard's entry
  count or its last entry's version;
- `balance_sign_rule_mismatch`: a balance row's `allow_negative` is not its account's;
- `entry_balance_chain_broken`: an entry's balance-after is not the previous
  entry's (same shard, by version) plus its own amount in the normal direction;
- `entry_version_gap`: a shard's entry versions do not run 1, 2, 3, ...;
- `entries_without_balance`: entries on an (account, shard) with no balance row;
- `balance_pending_mismatch`: a balance row's pending out/in amounts are not the
  sum of the pending holds that lower/raise it (as `_hold_pending_changes` in
  `ledger.services` books them);
- `account_negative`: an account that may not go negative has posted minus
  pending-out below zero.
Works on PostgreSQL and SQLite.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from django.db.models import (
    BigIntegerField,
    Case,
    Count,
    Exists,
    F,
    Max,
    OuterRef,
    Q,
    Subquery,
    Sum,
    Value,
    When,
    Window,
)
from django.db.models.expressions import Combinable
from django.db.models.functions import Coalesce, Lag

from core.money import Money, MoneyError
from ledger.models import Account, Balance, Entry, Hold, Transaction

CHUNK_SIZE = 2000


@dataclass(frozen=True)
class Finding:
    """One difference between what the ledger records and what its entries imply."""

    code: str
    message: str
    details: dict[str, Any] = field(default_factory=dict)


@dataclass
class IntegrityReport:
    findings: list[Finding] = field(default_factory=list)
    transactions_checked: int = 0
    entries_checked: int = 0
    balances_checked: int = 0
    accounts_checked: int = 0
    pending_holds_checked: int = 0

    @property
    def is_clean(self) -> bool:
        return not self.findings

    def codes(self) -> set[str]:
        return {finding.code for finding in self.findings}

    def checked_summary(self) -> str:
        return (
            f"{self.transactions_checked} transactions, {self.entries_checked} entries, "
            f"{self.balances_checked} balance rows, {self.accounts_checked} accounts, "
            f"{self.pending_holds_checked} pending holds"
        )


def ledger_integrity_report() -> IntegrityReport:
    report = IntegrityReport(
        transactions_checked=Transaction.objects.count(),
        entries_checked=Entry.objects.count(),
        balances_checked=Balance.objects.count(),
        accounts_checked=Account.objects.count(),
        pending_holds_checked=Hold.objects.filter(status=Hold.Status.PENDING).count(),
    )
    for check in CHECKS:
        report.findings.extend(check())
    return report


# --- helpers ------------------------------------------------------------------


def _amount_text(minor: int, currency: str) -> str:
    try:
        return f"{Money(minor, currency).decimal_string()} {currency}"
    except MoneyError:
        return f"{minor} minor units of {currency!r}"


def _normal_sign(type_path: str) -> Case:
    """SQL for `Account.normal_sign`, given the path to the account's type field."""
    debit_normal = Q(**{f"{type_path}__in": sorted(Account.DEBIT_NORMAL_TYPES)})
    return Case(When(debit_normal, then=Value(1)), default=Value(-1), output_field=BigIntegerField())


def _zero_if_none(expression: Subquery) -> Coalesce:
    return Coalesce(expression, Value(0), output_field=BigIntegerField())


def _per_shard_of_entries(aggregate: Sum | Count | Max) -> Coalesce:
    """The aggregate over the entries of the outer balance row's (account, shard)."""
    entries = Entry.objects.filter(account_id=OuterRef("account_id"), shard=OuterRef("shard")).order_by()
    return _zero_if_none(Subquery(entries.values("account_id", "shard").annotate(value=aggregate).values("value")))


def _pending_on_side(account_field: str, shard_field: str) -> Coalesce:
    """Pending holds' total on the outer balance row's (account, shard), on one side of the hold."""
    holds = Hold.objects.filter(
        status=Hold.Status.PENDING, **{account_field: OuterRef("account_id"), shard_field: OuterRef("shard")}
    ).order_by()
    return _zero_if_none(Subquery(holds.values(account_field).annotate(total=Sum("amount_minor")).values("total")))


def _shard_details(row: dict[str, Any]) -> dict[str, Any]:
    return {"account": row["account__code"], "account_id": row["account_id"], "shard": row["shard"]}


# --- transactions and entries ---------------------------------------------------


def _unbalanced_transactions() -> Iterator[Finding]:
    rows = (
        Entry.objects.values("transaction_id", "currency")
        .annotate(total_minor=Sum("amount_minor"))
        .exclude(total_minor=0)
        .order_by("transaction_id", "currency")
    )
    for row in rows.iterator(chunk_size=CHUNK_SIZE):
        total = int(row["total_minor"])
        yield Finding(
            "transaction_unbalanced",
            f"transaction #{row['transaction_id']}: entries sum to {_amount_text(total, row['currency'])}, not zero",
            {"transaction_id": row["transaction_id"], "currency": row["currency"], "total_minor": total},
        )


def _transactions_with_too_few_entries() -> Iterator[Finding]:
    rows = (
        Transaction.objects.annotate(entry_count=Count("entries"))
        .filter(entry_count__lt=2)
        .values_list("pk", "kind", "entry_count")
        .order_by("pk")
    )
    for transaction_id, kind, entry_count in rows.iterator(chunk_size=CHUNK_SIZE):
        yield Finding(
            "transaction_too_few_entries",
            f"transaction #{transaction_id} ({kind}) has {entry_count} entries, needs at least 2",
            {"transaction_id": transaction_id, "entry_count": entry_count},
        )


def _entries_in_wrong_currency() -> Iterator[Finding]:
    rows = (
        Entry.objects.exclude(currency=F("account__currency"))
        .values_list("pk", "transaction_id", "account__code", "currency", "account__currency")
        .order_by("pk")
    )
    for entry_id, transaction_id, code, currency, account_currency in rows.iterator(chunk_size=CHUNK_SIZE):
        yield Finding(
            "entry_currency_mismatch",
            f"entry #{entry_id} (transaction #{transaction_id}) is in {currency} on {account_currency} account {code}",
            {
                "entry_id": entry_id,
                "transaction_id": transaction_id,
                "account": code,
                "currency": currency,
                "account_currency": account_currency,
            },
        )


def _broken_balance_chains() -> Iterator[Finding]:
    """Each entry against the previous entry of its shard, by version (LAG over the shard)."""
    shard_order: dict[str, Any] = {"partition_by": [F("account_id"), F("shard")], "order_by": F("version_after").asc()}
    change: Combinable = F("amount_minor") * _normal_sign("account__type")
    rows = (
        Entry.objects.annotate(
            previous_balance=Window(Lag("balance_after_minor", default=Value(0)), **shard_order),
            previous_version=Window(Lag("version_after", default=Value(0)), **shard_order),
        )
        .annotate(expected_balance=F("previous_balance") + change, expected_version=F("previous_version") + 1)
        .filter(~Q(balance_after_minor=F("expected_balance")) | ~Q(version_after=F("expected_version")))
        .values(
            "pk",
            "account_id",
            "account__code",
            "shard",
            "currency",
            "balance_after_minor",
            "version_after",
            "expected_balance",
            "expected_version",
        )
        .order_by("account_id", "shard", "version_after")
    )
    for row in rows.iterator(chunk_size=CHUNK_SIZE):
        yield from _chain_findings(row)


def _chain_findings(row: dict[str, Any]) -> Iterator[Finding]:
    where = f"entry #{row['pk']} on {row['account__code']} shard {row['shard']}"
    details = {**_shard_details(row), "entry_id": row["pk"]}
    expected_balance, expected_version = int(row["expected_balance"]), int(row["expected_version"])
    if row["balance_after_minor"] != expected_balance:
        yield Finding(
            "entry_balance_chain_broken",
            f"{where}: balance after is {_amount_text(row['balance_after_minor'], row['currency'])}, "
            f"previous entry plus this one give {_amount_text(expected_balance, row['currency'])}",
            {**details, "balance_after_minor": row["balance_after_minor"], "expected_minor": expected_balance},
        )
    if row["version_after"] != expected_version:
        yield Finding(
            "entry_version_gap",
            f"{where}: version {row['version_after']} follows version {expected_version - 1}",
            {**details, "version_after": row["version_after"], "expected_version": expected_version},
        )


def _entries_without_balance_row() -> Iterator[Finding]:
    has_balance = Balance.objects.filter(account_id=OuterRef("account_id"), shard=OuterRef("shard"))
    rows = (
        Entry.objects.filter(~Exists(has_balance))
        .values("account_id", "account__code", "shard")
        .annotate(entry_count=Count("id"))
        .order_by("account_id", "shard")
    )
    for row in rows.iterator(chunk_size=CHUNK_SIZE):
        yield Finding(
            "entries_without_balance",
            f"{row['entry_count']} entries on {row['account__code']} shard {row['shard']}, which has no balance row",
            {**_shard_details(row), "entry_count": row["entry_count"]},
        )


# --- balance rows ---------------------------------------------------------------


def _balances_disagreeing_with_entries() -> Iterator[Finding]:
    rows = (
        Balance.objects.annotate(
            expected_posted=_per_shard_of_entries(Sum("amount_minor")) * _normal_sign("account__type"),
            entry_count=_per_shard_of_entries(Count("id")),
            last_version=_per_shard_of_entries(Max("version_after")),
        )
        .filter(
            ~Q(posted_minor=F("expected_posted"))
            | ~Q(version=F("entry_count"))
            | ~Q(version=F("last_version"))
            | ~Q(allow_negative=F("account__allow_negative"))
        )
        .values(
            "account_id",
            "account__code",
            "account__currency",
            "account__allow_negative",
            "shard",
            "posted_minor",
            "version",
            "allow_negative",
            "expected_posted",
            "entry_count",
            "last_version",
        )
        .order_by("account_id", "shard")
    )
    for row in rows.iterator(chunk_size=CHUNK_SIZE):
        yield from _balance_row_findings(row)


def _balance_row_findings(row: dict[str, Any]) -> Iterator[Finding]:
    where = f"balance of {row['account__code']} shard {row['shard']}"
    details = _shard_details(row)
    expected_posted, entry_count, last_version = (
        int(row[key]) for key in ("expected_posted", "entry_count", "last_version")
    )
    if row["posted_minor"] != expected_posted:
        currency = row["account__currency"]
        yield Finding(
            "balance_posted_mismatch",
            f"{where}: posted {_amount_text(row['posted_minor'], currency)}, "
            f"its entries sum to {_amount_text(expected_posted, currency)}",
            {**details, "posted_minor": row["posted_minor"], "expected_minor": expected_posted},
        )
    if not row["version"] == entry_count == last_version:
        yield Finding(
            "balance_version_mismatch",
            f"{where}: version {row['version']}, but {entry_count} entries with last version {last_version}",
            {**details, "version": row["version"], "entry_count": entry_count, "last_version": last_version},
        )
    if row["allow_negative"] != row["account__allow_negative"]:
        yield Finding(
            "balance_sign_rule_mismatch",
            f"{where}: allow_negative is {row['allow_negative']}, the account's is {row['account__allow_negative']}",
            {
                **details,
                "allow_negative": row["allow_negative"],
                "account_allow_negative": row["account__allow_negative"],
            },
        )


def _balances_disagreeing_with_holds() -> Iterator[Finding]:
    # A debit lowers a credit-normal account and raises a debit-normal one; a credit the reverse.
    debit_normal = Q(account__type__in=sorted(Account.DEBIT_NORMAL_TYPES))
    rows = (
        Balance.objects.annotate(
            held_as_debit=_pending_on_side("debit_account", "debit_shard"),
            held_as_credit=_pending_on_side("credit_account", "credit_shard"),
        )
        .annotate(
            expected_out=Case(When(debit_normal, then=F("held_as_credit")), default=F("held_as_debit")),
            expected_in=Case(When(debit_normal, then=F("held_as_debit")), default=F("held_as_credit")),
        )
        .filter(~Q(pending_out_minor=F("expected_out")) | ~Q(pending_in_minor=F("expected_in")))
        .values(
            "account_id",
            "account__code",
            "account__currency",
            "shard",
            "pending_out_minor",
            "pending_in_minor",
            "expected_out",
            "expected_in",
        )
        .order_by("account_id", "shard")
    )
    for row in rows.iterator(chunk_size=CHUNK_SIZE):
        for direction in ("out", "in"):
            recorded, expected = row[f"pending_{direction}_minor"], int(row[f"expected_{direction}"])
            if recorded != expected:
                yield _pending_finding(row, direction, recorded, expected)


def _pending_finding(row: dict[str, Any], direction: str, recorded: int, expected: int) -> Finding:
    currency = row["account__currency"]
    return Finding(
        "balance_pending_mismatch",
        f"balance of {row['account__code']} shard {row['shard']}: pending {direction} "
        f"{_amount_text(recorded, currency)}, its pending holds total {_amount_text(expected, currency)}",
        {**_shard_details(row), "direction": direction, "pending_minor": recorded, "expected_minor": expected},
    )


def _negative_accounts() -> Iterator[Finding]:
    rows = (
        Account.objects.filter(allow_negative=False)
        .annotate(posted=Sum("balances__posted_minor"), pending_out=Sum("balances__pending_out_minor"))
        .annotate(available=F("posted") - F("pending_out"))
        .filter(available__lt=0)
        .values_list("pk", "code", "currency", "posted", "pending_out", "available")
        .order_by("pk")
    )
    for account_id, code, currency, posted, pending_out, available in rows.iterator(chunk_size=CHUNK_SIZE):
        yield Finding(
            "account_negative",
            f"account {code} may not go negative but has {_amount_text(int(available), currency)} available "
            f"(posted {_amount_text(int(posted), currency)}, pending out {_amount_text(int(pending_out), currency)})",
            {
                "account": code,
                "account_id": account_id,
                "posted_minor": int(posted),
                "pending_out_minor": int(pending_out),
                "available_minor": int(available),
            },
        )


CHECKS: tuple[Callable[[], Iterator[Finding]], ...] = (
    _unbalanced_transactions,
    _transactions_with_too_few_entries,
    _entries_in_wrong_currency,
    _balances_disagreeing_with_entries,
    _broken_balance_chains,
    _entries_without_balance_row,
    _balances_disagreeing_with_holds,
    _negative_accounts,
)
