"""The accountant export: CSV that round-trips to the cent (or fils, or yen), Beancount that bean-check accepts."""

from __future__ import annotations

import csv
import subprocess
import sys
from collections import defaultdict
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from io import StringIO
from pathlib import Path
from typing import Any

import pytest
from beancount import loader
from beancount.core import data as beancount_data
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connection
from django.test.utils import CaptureQueriesContext

from core.money import Money
from ledger.management.commands import ledger_export
from ledger.models import Account, Entry, Transaction
from ledger.services import (
    account_create,
    credit,
    debit,
    hold_create,
    hold_post,
    transaction_post,
    transaction_reverse,
)

BEAN_CHECK = Path(sys.executable).with_name("bean-check")

CASH = "platform:cash:USD"
WALLET = "user:42:wallet"
FEES = "platform/fees"
OPENING = "equity:opening"
PROVIDER_FEES = "expenses:provider-fees"
JPY_UNDERSCORE = "a_b"
JPY_HYPHEN = "a-b"
BHD_BANK = "bank:bhd"
BHD_WALLET = "user:7:wallet:BHD"
ODD_SPACE = "ops::night shift"
ODD_UNICODE = "ünï/kasse"

ACCOUNTS = [
    # code, type, currency, may go negative
    (CASH, "asset", "USD", True),
    (WALLET, "liability", "USD", False),
    (FEES, "revenue", "USD", True),
    (OPENING, "equity", "USD", True),
    (PROVIDER_FEES, "expense", "USD", True),
    (JPY_UNDERSCORE, "asset", "JPY", True),
    (JPY_HYPHEN, "asset", "JPY", True),
    (BHD_BANK, "asset", "BHD", True),
    (BHD_WALLET, "liability", "BHD", False),
    (ODD_SPACE, "asset", "USD", True),
    (ODD_UNICODE, "asset", "USD", True),
]

CSV_COLUMNS = [
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


def at(year: int, month: int, day: int, hour: int = 0, minute: int = 0, tz: timezone = UTC) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=tz)


def usd(minor: int) -> Money:
    return Money(minor, "USD")


def _post(key: str, kind: str, description: str, event_at: datetime, *legs: Any) -> Transaction:
    return transaction_post(idempotency_key=key, kind=kind, description=description, event_at=event_at, legs=list(legs))


@pytest.fixture
def journal(settings: Any) -> dict[str, Transaction]:
    settings.LEDGER_HOT_ACCOUNT_SHARDS = 2
    for code, type_, currency, hot in ACCOUNTS:
        account_create(code=code, name=f"Account {code}", type=type_, currency=currency, allow_negative=hot)
    plus_two = timezone(timedelta(hours=2))
    txns = {
        "opening": _post(
            "opening", "opening", 'Opening "balance" \\ as agreed', at(2024, 1, 1),
            debit(CASH, usd(100_000)), credit(OPENING, usd(100_000)),
        ),
        "deposit": _post(
            "deposit", "deposit", "Deposit\nsecond line; ünïcödé ₱\ttab", at(2024, 1, 15, 12),
            debit(CASH, usd(12_345)), credit(WALLET, usd(12_345)),
        ),
        # 01:30 on 1 February in UTC+2 is still 31 January in UTC.
        "fee": _post(
            "fee", "fee", "", at(2024, 2, 1, 1, 30, tz=plus_two),
            debit(WALLET, usd(1_001)), credit(FEES, usd(1_001)),
        ),
        "jpy": _post(
            "jpy", "fx", "yen", at(2024, 2, 1),
            debit(JPY_UNDERSCORE, Money(1_500, "JPY")), credit(JPY_HYPHEN, Money(1_500, "JPY")),
        ),
        "bhd": _post(
            "bhd", "deposit", "fils", at(2024, 2, 10),
            debit(BHD_BANK, Money(1_005, "BHD")), credit(BHD_WALLET, Money(1_005, "BHD")),
        ),
        "mixed": _post(
            "mixed", "provider_fee", "two currencies in one", at(2024, 2, 11),
            debit(PROVIDER_FEES, usd(25)), credit(CASH, usd(25)),
            debit(JPY_HYPHEN, Money(7, "JPY")), credit(JPY_UNDERSCORE, Money(7, "JPY")),
        ),
        "odd": _post(
            "odd", "internal", "odd codes", at(2024, 2, 12),
            debit(ODD_SPACE, usd(1)), credit(ODD_UNICODE, usd(1)),
        ),
    }  # fmt: skip
    txns["reversal"] = transaction_reverse(transaction_id=txns["fee"].pk, reason="fee waived")
    hold = hold_create(
        idempotency_key="hold", debit_account_code=WALLET, credit_account_code=FEES, amount=usd(300), kind="capture"
    )
    txns["capture"] = hold_post(hold_id=hold.pk, amount=usd(120))
    return txns


def export(*args: str) -> str:
    out = StringIO()
    call_command("ledger_export", *args, stdout=out)
    return out.getvalue()


def csv_rows(*args: str) -> list[dict[str, str]]:
    reader = csv.DictReader(StringIO(export("--format", "csv", *args), newline=""))
    assert reader.fieldnames == CSV_COLUMNS
    return list(reader)


def bean_check(path: Path) -> subprocess.CompletedProcess[str]:
    command = [str(BEAN_CHECK), str(path)]  # our own venv executable and a temp file
    return subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)  # noqa: S603


def exported_ids(rows: list[dict[str, str]]) -> list[int]:
    return list(dict.fromkeys(int(row["transaction_id"]) for row in rows))


# --- CSV ------------------------------------------------------------------------------------


@pytest.mark.django_db
def test_csv_has_one_row_per_entry_that_round_trips_to_the_minor_unit(journal: dict[str, Transaction]) -> None:
    rows = csv_rows()

    entries = Entry.objects.select_related("account").order_by("transaction__event_at", "transaction_id", "id")
    assert len(rows) == entries.count() == 20
    for row, entry in zip(rows, entries, strict=True):
        assert (int(row["transaction_id"]), row["account_code"], row["currency"]) == (
            entry.transaction_id,
            entry.account.code,
            entry.currency,
        )
        assert (row["debit"] == "") != (row["credit"] == "")  # exactly one side
        if row["debit"]:
            assert Money.parse(row["debit"], row["currency"]).minor == entry.amount_minor
        else:
            assert -Money.parse(row["credit"], row["currency"]).minor == entry.amount_minor


@pytest.mark.django_db
def test_csv_debits_equal_credits_per_currency_and_per_transaction(journal: dict[str, Transaction]) -> None:
    rows = csv_rows()

    totals: dict[str, list[Decimal]] = defaultdict(lambda: [Decimal(0), Decimal(0)])
    per_transaction: dict[tuple[str, str], Decimal] = defaultdict(Decimal)
    for row in rows:
        amount = Decimal(row["debit"] or "0") - Decimal(row["credit"] or "0")
        totals[row["currency"]][0 if amount > 0 else 1] += abs(amount)
        per_transaction[row["transaction_id"], row["currency"]] += amount
    assert dict(totals) == {
        "USD": [Decimal("1144.93"), Decimal("1144.93")],
        "JPY": [Decimal("1507"), Decimal("1507")],
        "BHD": [Decimal("1.005"), Decimal("1.005")],
    }
    assert set(per_transaction.values()) == {Decimal(0)}


@pytest.mark.django_db
def test_csv_amounts_use_each_currencys_exponent_and_rows_carry_the_transaction(
    journal: dict[str, Transaction],
) -> None:
    rows = csv_rows()

    by_key = {(row["transaction_id"], row["account_code"]): row for row in rows}
    deposit, fee, reversal = journal["deposit"], journal["fee"], journal["reversal"]
    assert by_key[str(deposit.pk), CASH] | {"recorded_at": "-"} == {
        "transaction_id": str(deposit.pk),
        "event_at": "2024-01-15T12:00:00+00:00",
        "recorded_at": "-",
        "kind": "deposit",
        "description": "Deposit\nsecond line; ünïcödé ₱\ttab",
        "account_code": CASH,
        "account_name": f"Account {CASH}",
        "account_type": "asset",
        "currency": "USD",
        "debit": "123.45",
        "credit": "",
        "reverses": "",
    }
    assert datetime.fromisoformat(by_key[str(deposit.pk), CASH]["recorded_at"]) == deposit.created_at
    assert by_key[str(fee.pk), FEES]["event_at"] == "2024-01-31T23:30:00+00:00"
    assert (by_key[str(fee.pk), FEES]["debit"], by_key[str(fee.pk), FEES]["credit"]) == ("", "10.01")
    assert by_key[str(journal["jpy"].pk), JPY_UNDERSCORE]["debit"] == "1500"
    assert by_key[str(journal["bhd"].pk), BHD_WALLET]["credit"] == "1.005"
    assert by_key[str(journal["opening"].pk), OPENING]["description"] == 'Opening "balance" \\ as agreed'
    assert by_key[str(reversal.pk), FEES]["reverses"] == str(fee.pk)
    assert by_key[str(reversal.pk), FEES]["debit"] == "10.01"


@pytest.mark.django_db
def test_csv_is_ordered_by_event_time_then_transaction_id(journal: dict[str, Transaction]) -> None:
    rows = csv_rows()

    expected = sorted(Transaction.objects.all(), key=lambda txn: (txn.event_at, txn.pk))
    assert exported_ids(rows) == [txn.pk for txn in expected]
    assert exported_ids(rows)[:7] == [
        journal[name].pk for name in ("opening", "deposit", "fee", "jpy", "bhd", "mixed", "odd")
    ]


@pytest.mark.django_db
def test_csv_can_be_written_to_a_file(journal: dict[str, Transaction], tmp_path: Path) -> None:
    target = tmp_path / "journal.csv"

    assert export("--format", "csv", "--output", str(target)) == ""

    assert target.read_bytes().decode("utf-8") == export("--format", "csv")


# --- the date range --------------------------------------------------------------------------


@pytest.mark.django_db
def test_since_is_inclusive_and_until_exclusive_on_utc_event_dates(journal: dict[str, Transaction]) -> None:
    january = exported_ids(csv_rows("--since", "2024-01-01", "--until", "2024-02-01"))
    assert january == [journal["opening"].pk, journal["deposit"].pk, journal["fee"].pk]

    assert exported_ids(csv_rows("--until", "2024-01-15")) == [journal["opening"].pk]
    assert exported_ids(csv_rows("--since", "2024-01-16", "--until", "2024-02-10")) == [
        journal["fee"].pk,
        journal["jpy"].pk,
    ]
    since_february = exported_ids(csv_rows("--since", "2024-02-01"))
    assert since_february[:4] == [journal[name].pk for name in ("jpy", "bhd", "mixed", "odd")]
    assert set(since_february[4:]) == {journal["reversal"].pk, journal["capture"].pk}
    assert exported_ids(csv_rows("--since", "2023-01-01", "--until", "2024-01-01")) == []


@pytest.mark.django_db
def test_bad_date_ranges_are_refused() -> None:
    with pytest.raises(CommandError, match="before"):
        export("--format", "csv", "--since", "2024-02-01", "--until", "2024-02-01")
    with pytest.raises(CommandError, match="not a date"):
        export("--format", "csv", "--since", "31/01/2024")
    with pytest.raises(CommandError):
        export("--format", "xlsx")


# --- Beancount -------------------------------------------------------------------------------


def write_beancount(tmp_path: Path, *args: str) -> Path:
    target = tmp_path / "journal.beancount"
    call_command("ledger_export", "--format", "beancount", "--output", str(target), *args, stdout=StringIO())
    return target


@pytest.mark.django_db
def test_beancount_export_passes_bean_check(journal: dict[str, Transaction], tmp_path: Path) -> None:
    result = bean_check(write_beancount(tmp_path))

    assert (result.returncode, result.stderr) == (0, "")


@pytest.mark.django_db
def test_beancount_account_names_are_valid_unique_and_keep_the_code(
    journal: dict[str, Transaction], tmp_path: Path
) -> None:
    entries, errors, _ = loader.load_file(str(write_beancount(tmp_path)))

    assert errors == []
    opens = {entry.meta["ledger-code"]: entry for entry in entries if isinstance(entry, beancount_data.Open)}
    names = {code: entry.account for code, entry in opens.items()}
    assert names[WALLET] == "Liabilities:User:42:Wallet"
    assert names[FEES] == "Income:Platform:Fees"
    assert names[OPENING] == "Equity:Equity:Opening"
    assert names[PROVIDER_FEES] == "Expenses:Expenses:Provider-fees"
    assert names[BHD_WALLET] == "Liabilities:User:7:Wallet:BHD"
    assert names[ODD_SPACE] == "Assets:Ops:X:Night-shift"
    assert names[ODD_UNICODE] == "Assets:X-n-:Kasse"
    # Both clean up to Assets:A-b; the later account is told apart by its id.
    assert names[JPY_UNDERSCORE] == "Assets:A-b"
    assert names[JPY_HYPHEN] == f"Assets:A-b-{Account.objects.get(code=JPY_HYPHEN).pk}"
    assert len(set(names.values())) == len(ACCOUNTS)
    assert {code: entry.currencies for code, entry in opens.items()} == {
        code: [currency] for code, _, currency, _ in ACCOUNTS
    }
    assert opens[CASH].date.isoformat() == "2024-01-01"
    assert opens[JPY_HYPHEN].date.isoformat() == "2024-02-01"


@pytest.mark.django_db
def test_beancount_transactions_keep_text_amounts_and_ids_exactly(
    journal: dict[str, Transaction], tmp_path: Path
) -> None:
    entries, errors, _ = loader.load_file(str(write_beancount(tmp_path)))

    assert errors == []
    txns = {int(entry.meta["ledger-id"]): entry for entry in entries if isinstance(entry, beancount_data.Transaction)}
    assert set(txns) == set(Transaction.objects.values_list("pk", flat=True))
    for txn in Transaction.objects.all():
        exported = txns[txn.pk]
        assert (exported.payee, exported.narration) == (txn.kind, txn.description)
        assert exported.date == txn.event_at.astimezone(UTC).date()
    fee = txns[journal["fee"].pk]
    assert fee.date.isoformat() == "2024-01-31"
    assert sorted((p.units.number, p.units.currency) for p in fee.postings) == [
        (Decimal("-10.01"), "USD"),
        (Decimal("10.01"), "USD"),
    ]
    bhd = txns[journal["bhd"].pk]
    assert sorted(str(p.units.number) for p in bhd.postings) == ["-1.005", "1.005"]
    assert sorted(str(p.units.number) for p in txns[journal["jpy"].pk].postings) == ["-1500", "1500"]
    assert txns[journal["reversal"].pk].meta["reverses"] == str(journal["fee"].pk)
    assert len(txns[journal["mixed"].pk].postings) == 4


@pytest.mark.django_db
def test_a_beancount_export_of_a_date_range_opens_only_the_accounts_it_uses(
    journal: dict[str, Transaction], tmp_path: Path
) -> None:
    target = write_beancount(tmp_path, "--since", "2024-01-15", "--until", "2024-02-01")

    result = bean_check(target)
    assert (result.returncode, result.stderr) == (0, "")
    entries, _, _ = loader.load_file(str(target))
    opens = {
        entry.meta["ledger-code"]: entry.date.isoformat() for entry in entries if isinstance(entry, beancount_data.Open)
    }
    assert opens == {CASH: "2024-01-15", WALLET: "2024-01-15", FEES: "2024-01-31"}
    ids = [int(entry.meta["ledger-id"]) for entry in entries if isinstance(entry, beancount_data.Transaction)]
    assert ids == [journal["deposit"].pk, journal["fee"].pk]


@pytest.mark.django_db
def test_an_empty_export_is_still_valid(tmp_path: Path) -> None:
    assert csv_rows() == []
    result = bean_check(write_beancount(tmp_path))
    assert (result.returncode, result.stderr) == (0, "")


@pytest.mark.django_db
def test_accounts_posted_to_after_the_account_list_was_read_are_still_opened(
    journal: dict[str, Transaction], tmp_path: Path
) -> None:
    # As if every posting landed between the account query and the entries query.
    target = tmp_path / "late.beancount"
    with target.open("w", encoding="utf-8") as sink:
        ledger_export.write_beancount([], ledger_export.exported_entries(None, None).iterator(), sink)

    result = bean_check(target)
    assert (result.returncode, result.stderr) == (0, "")
    entries, _, _ = loader.load_file(str(target))
    opens = {
        entry.meta["ledger-code"]: entry.date.isoformat() for entry in entries if isinstance(entry, beancount_data.Open)
    }
    assert len(opens) == len(ACCOUNTS)
    assert (opens[CASH], opens[FEES], opens[BHD_WALLET]) == ("2024-01-01", "2024-01-31", "2024-02-10")


@pytest.mark.django_db(transaction=True)
def test_an_export_outside_any_transaction_reads_one_snapshot(journal: dict[str, Transaction], tmp_path: Path) -> None:
    with CaptureQueriesContext(connection) as queries:
        rows = csv_rows("--since", "2024-02-01", "--until", "2024-02-11")

    assert exported_ids(rows) == [journal["jpy"].pk, journal["bhd"].pk]
    assert [query["sql"] for query in queries][:2] == [
        "BEGIN",
        "SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY",
    ]

    result = bean_check(write_beancount(tmp_path))
    assert (result.returncode, result.stderr) == (0, "")
