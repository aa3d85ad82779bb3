"""`manage.py ledger_export`: the journal for the accountant, as CSV or Beancount.

Exports the transactions whose `event_at` falls in [--since, --until) (UTC
dates, both optional), ordered by event_at then id, streamed from the database
in chunks. Amounts are exact decimal strings with the currency's own exponent
(JPY 0, USD 2, BHD 3); nothing passes through a float.

Beancount account names are the account type's root (Assets, Liabilities,
Equity, Income, Expenses) plus the account code split on ':' and '/', each
component made valid for Beancount; two codes that clean up to the same name
are told apart with the account id. The original code is kept as `ledger-code`
metadata on the `open` directive.
"""

from __future__ import annotations

import csv
import re
from argparse import ArgumentTypeError
from collections.abc import Iterable, Iterator
from contextlib import ExitStack, contextmanager
from datetime import UTC, date, datetime
from itertools import groupby
from typing import Any, Protocol

from django.core.management.base import BaseCommand, CommandError, CommandParser, OutputWrapper
from django.db import connection, transaction
from django.db.models import Min, Q, QuerySet

from core.money import Money
from ledger.models import Account, Entry

CHUNK_SIZE = 2000

CSV_HEADER = [
    "transaction_id",
    "event_at",
    "recorded_at",
    "kind",
    "description",
    "account_code",
    "account_name",
    "account_type",
    "currency",
    "debit",
    "credit",
    "reverses",
]

BEANCOUNT_ROOTS = {
    Account.Type.ASSET: "Assets",
    Account.Type.LIABILITY: "Liabilities",
    Account.Type.EQUITY: "Equity",
    Account.Type.REVENUE: "Income",
    Account.Type.EXPENSE: "Expenses",
}
_CODE_SEPARATORS = re.compile(r"[:/]")
_NOT_COMPONENT_CHARACTER = re.compile(r"[^A-Za-z0-9-]")
_BEANCOUNT_ESCAPES = {"\\": "\\\\", '"': '\\"', "\n": "\\n", "\r": "\\r", "\t": "\\t"}


class TextSink(Protocol):
    def write(self, text: str, /) -> Any: ...


class _RawStdout:
    """Writes through a command's stdout without the newline it adds to each write."""

    def __init__(self, stdout: OutputWrapper) -> None:
        self.stdout = stdout

    def write(self, text: str) -> int:
        self.stdout.write(text, ending="")
        return len(text)


# --- what is exported ---------------------------------------------------------------------


def utc_day_start(text: str) -> datetime:
    """Parse YYYY-MM-DD as the start of that day in UTC."""
    return datetime.combine(date.fromisoformat(text), datetime.min.time(), tzinfo=UTC)


def _event_range(prefix: str, since: datetime | None, until: datetime | None) -> Q:
    condition = Q()
    if since is not None:
        condition &= Q(**{f"{prefix}event_at__gte": since})
    if until is not None:
        condition &= Q(**{f"{prefix}event_at__lt": until})
    return condition


def exported_entries(since: datetime | None, until: datetime | None) -> QuerySet[Entry]:
    return (
        Entry.objects.filter(_event_range("transaction__", since, until))
        .select_related("transaction", "account")
        .order_by("transaction__event_at", "transaction_id", "id")
    )


def exported_accounts(since: datetime | None, until: datetime | None) -> QuerySet[Account]:
    """Accounts with an entry in the range, each with the event_at of its first one there."""
    return (
        Account.objects.filter(_event_range("entries__transaction__", since, until))
        .annotate(first_event_at=Min("entries__transaction__event_at"))
        .filter(first_event_at__isnull=False)
        .order_by("pk")
    )


def _utc_iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat()


# --- CSV -----------------------------------------------------------------------------------


def _csv_row(entry: Entry) -> list[str | int]:
    txn, account = entry.transaction, entry.account
    amount = Money(abs(entry.amount_minor), entry.currency).decimal_string()
    return [
        txn.pk,
        _utc_iso(txn.event_at),
        _utc_iso(txn.created_at),
        txn.kind,
        txn.description,
        account.code,
        account.name,
        account.type,
        entry.currency,
        amount if entry.amount_minor > 0 else "",
        amount if entry.amount_minor < 0 else "",
        txn.reverses_id or "",
    ]


def write_csv(entries: Iterable[Entry], sink: TextSink) -> None:
    writer = csv.writer(sink)
    writer.writerow(CSV_HEADER)
    for entry in entries:
        writer.writerow(_csv_row(entry))


# --- Beancount -----------------------------------------------------------------------------


def beancount_string(text: str) -> str:
    return '"' + "".join(_BEANCOUNT_ESCAPES.get(character, character) for character in text) + '"'


def _beancount_component(part: str) -> str:
    """A name component: an upper-case letter or digit first, then letters, digits and hyphens."""
    component = _NOT_COMPONENT_CHARACTER.sub("-", part)
    component = component[:1].upper() + component[1:]
    return component if component[:1].isalnum() else f"X{component}"


def beancount_account_name(code: str, account_type: str) -> str:
    components = (_beancount_component(part) for part in _CODE_SEPARATORS.split(code))
    return ":".join([BEANCOUNT_ROOTS[Account.Type(account_type)], *components])


class BeancountNames:
    """Account id -> Beancount account name, unique within one export."""

    def __init__(self) -> None:
        self.by_account_id: dict[int, str] = {}
        self._taken: set[str] = set()

    def add(self, account: Account) -> str:
        base = name = beancount_account_name(account.code, account.type)
        attempt = 1
        while name in self._taken:
            name = f"{base}-{account.pk}" if attempt == 1 else f"{base}-{account.pk}-{attempt}"
            attempt += 1
        self._taken.add(name)
        self.by_account_id[account.pk] = name
        return name


def _utc_date(moment: datetime) -> date:
    return moment.astimezone(UTC).date()


def _beancount_open(account: Account, name: str, first_posting_on: date) -> str:
    opened_on = min(_utc_date(account.created_at), first_posting_on)
    return (
        f"{opened_on.isoformat()} open {name} {account.currency}\n"
        f"  ledger-code: {beancount_string(account.code)}\n"
        f"  ledger-name: {beancount_string(account.name)}\n"
    )


def _beancount_transaction(legs: list[Entry], names: BeancountNames) -> str:
    txn = legs[0].transaction
    lines = [
        f"{_utc_date(txn.event_at).isoformat()} * {beancount_string(txn.kind)} {beancount_string(txn.description)}",
        f'  ledger-id: "{txn.pk}"',
        f'  event-at: "{_utc_iso(txn.event_at)}"',
    ]
    if txn.reverses_id is not None:
        lines.append(f'  reverses: "{txn.reverses_id}"')
    for entry in legs:
        amount = Money(entry.amount_minor, entry.currency).decimal_string()
        lines.append(f"  {names.by_account_id[entry.account_id]}  {amount} {entry.currency}")
    return "\n".join(lines) + "\n"


def _late_opens(legs: list[Entry], names: BeancountNames) -> str:
    """Open directives for accounts first seen here: posted to after the account list was read."""
    posted_on = _utc_date(legs[0].transaction.event_at)
    return "".join(
        _beancount_open(entry.account, names.add(entry.account), posted_on)
        for entry in legs
        if entry.account_id not in names.by_account_id
    )


def write_beancount(accounts: Iterable[Account], entries: Iterable[Entry], sink: TextSink) -> None:
    """`accounts` carry `first_event_at`, their first posting in the export; `entries` come grouped by transaction."""
    names = BeancountNames()
    sink.write("; Ledger export. Dates are event dates in UTC; amounts are exact.\n\n")
    for account in accounts:
        sink.write(_beancount_open(account, names.add(account), _utc_date(account.first_event_at)))
    for _, group in groupby(entries, key=lambda entry: entry.transaction_id):
        legs = list(group)
        sink.write(_late_opens(legs, names) + "\n" + _beancount_transaction(legs, names))


# --- the command ---------------------------------------------------------------------------


@contextmanager
def _one_snapshot() -> Iterator[None]:
    """Read the account list and the entries from one snapshot.

    On PostgreSQL a read-only REPEATABLE READ transaction; its server-side
    cursors also stream as read, where outside a transaction they would be
    materialized on the server first.
    """
    outermost = not connection.in_atomic_block
    with transaction.atomic():
        if outermost and connection.vendor == "postgresql":
            with connection.cursor() as cursor:
                cursor.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        yield


def _day_argument(text: str) -> datetime:
    try:
        return utc_day_start(text)
    except ValueError as error:
        raise ArgumentTypeError(f"{text!r} is not a date like 2024-01-31") from error


class Command(BaseCommand):
    help = "Export ledger transactions by event date (since inclusive, until exclusive, UTC) as CSV or Beancount."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--format", required=True, choices=["csv", "beancount"], dest="export_format")
        parser.add_argument("--since", type=_day_argument, help="First event date to include, YYYY-MM-DD (UTC).")
        parser.add_argument("--until", type=_day_argument, help="First event date to leave out, YYYY-MM-DD (UTC).")
        parser.add_argument("--output", help="File to write; standard output by default.")

    def handle(self, *args: Any, **options: Any) -> None:
        since, until = options["since"], options["until"]
        if since is not None and until is not None and since >= until:
            raise CommandError("--since must be before --until")
        with ExitStack() as stack:
            stack.enter_context(_one_snapshot())
            sink: TextSink = _RawStdout(self.stdout)
            if options["output"]:
                sink = stack.enter_context(open(options["output"], "w", encoding="utf-8", newline=""))
            self._export(options["export_format"], since, until, sink)

    def _export(self, export_format: str, since: datetime | None, until: datetime | None, sink: TextSink) -> None:
        entries: Iterator[Entry] = exported_entries(since, until).iterator(chunk_size=CHUNK_SIZE)
        if export_format == "csv":
            write_csv(entries, sink)
        else:
            write_beancount(exported_accounts(since, until).iterator(chunk_size=CHUNK_SIZE), entries, sink)
