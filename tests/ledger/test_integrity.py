"""The integrity check: a ledger built through the services is clean; every kind of drift is reported.

Drift is made with raw SQL. Balance rows can be updated directly; entries and
transactions are append-only, so those updates run after
`SET LOCAL session_replication_role = replica`, which switches off user triggers
and foreign-key checks for the rest of the test's database transaction.
"""

from __future__ import annotations

from datetime import timedelta
from io import StringIO
from typing import Any

import pytest
from django.core.management import call_command, execute_from_command_line
from django.core.management.base import CommandError
from django.db import connection, transaction
from django.utils import timezone

from core.money import Money
from ledger import tasks
from ledger.integrity import Finding, IntegrityReport, ledger_integrity_report
from ledger.models import Account, Balance, Entry, Hold, Transaction
from ledger.services import (
    account_create,
    credit,
    debit,
    hold_create,
    hold_post,
    hold_void,
    transaction_post,
    transaction_reverse,
)

CASH = "platform:cash:USD"
FEES = "platform:fees:USD"
PROVIDER_FEES = "platform:provider-fees:USD"
WALLET_1 = "user:1:wallet:USD"
WALLET_2 = "user:2:wallet:USD"
JPY_CASH = "platform:cash:JPY"
JPY_WALLET = "user:1:wallet:JPY"


def usd(minor: int) -> Money:
    return Money(minor, "USD")


def _post(key: str, *legs: Any, kind: str = "transfer") -> Transaction:
    return transaction_post(idempotency_key=key, kind=kind, legs=list(legs))


def _hold(key: str, debit_code: str, credit_code: str, minor: int) -> Hold:
    return hold_create(
        idempotency_key=key,
        debit_account_code=debit_code,
        credit_account_code=credit_code,
        amount=usd(minor),
        kind="hold",
    )


@pytest.fixture
def book(settings: Any) -> dict[str, Any]:
    """A small ledger with every kind of movement: postings, a reversal, holds pending, posted and voided."""
    settings.LEDGER_HOT_ACCOUNT_SHARDS = 3
    for code, type_, hot in [
        (CASH, "asset", True),
        (FEES, "revenue", True),
        (PROVIDER_FEES, "expense", True),
        (WALLET_1, "liability", False),
        (WALLET_2, "liability", False),
    ]:
        account_create(code=code, name=code, type=type_, currency="USD", allow_negative=hot)
    account_create(code=JPY_CASH, name="JPY cash", type="asset", currency="JPY", allow_negative=True)
    account_create(code=JPY_WALLET, name="JPY wallet", type="liability", currency="JPY")

    deposit_1 = _post("deposit:1", debit(CASH, usd(10_000)), credit(WALLET_1, usd(10_000)), kind="deposit")
    deposit_2 = _post("deposit:2", debit(CASH, usd(5_000)), credit(WALLET_2, usd(5_000)), kind="deposit")
    transfer = _post("transfer:1", debit(WALLET_1, usd(3_000)), credit(WALLET_2, usd(2_900)), credit(FEES, usd(100)))
    _post("provider-fee:1", debit(PROVIDER_FEES, usd(30)), credit(CASH, usd(30)), kind="provider_fee")
    _post("deposit:jpy", debit(JPY_CASH, Money(1_500, "JPY")), credit(JPY_WALLET, Money(1_500, "JPY")))
    transaction_reverse(transaction_id=deposit_2.pk, reason="duplicate deposit")
    pending_wallet = _hold("hold:wallet", WALLET_1, WALLET_2, 1_000)  # liability -> liability
    pending_expense = _hold("hold:expense", PROVIDER_FEES, CASH, 50)  # expense -> asset
    hold_post(hold_id=_hold("hold:partial", WALLET_2, FEES, 500).pk, amount=usd(200))
    hold_void(hold_id=_hold("hold:void", WALLET_1, WALLET_2, 300).pk)
    return {
        "deposit_1": deposit_1,
        "transfer": transfer,
        "pending_wallet": pending_wallet,
        "pending_expense": pending_expense,
    }


def bypass_ledger_triggers() -> None:
    with connection.cursor() as cursor:
        # Run now the deferred zero-sum checks the fixture's (clean) postings queued, before anything is broken.
        cursor.execute("SET CONSTRAINTS ALL IMMEDIATE")
        cursor.execute("SET LOCAL session_replication_role = replica")


def run_sql(sql: str, params: list[Any] | None = None, *, bypass_triggers: bool = False) -> int:
    if bypass_triggers:
        bypass_ledger_triggers()
    with connection.cursor() as cursor:
        cursor.execute(sql, params or [])
        return cursor.rowcount


def account_id(code: str) -> int:
    return Account.objects.get(code=code).pk


def only_balance(code: str) -> Balance:
    return Balance.objects.get(account__code=code)


def found(report: IntegrityReport, code: str) -> list[Finding]:
    return [finding for finding in report.findings if finding.code == code]


def check_command_fails() -> str:
    out = StringIO()
    with pytest.raises(CommandError, match="difference"):
        call_command("ledger_check", stdout=out)
    return out.getvalue()


# --- a clean ledger ---------------------------------------------------------------


@pytest.mark.django_db
def test_a_ledger_built_by_the_services_is_clean(book: dict[str, Any]) -> None:
    report = ledger_integrity_report()

    assert report.findings == []
    assert report.is_clean
    assert report.transactions_checked == 7 == Transaction.objects.count()
    assert report.entries_checked == 15
    assert report.balances_checked == 3 + 3 + 3 + 1 + 1 + 3 + 1
    assert report.accounts_checked == 7
    assert report.pending_holds_checked == 2
    # The fixture really exercised pending amounts in both directions on both kinds of account.
    assert (only_balance(WALLET_1).pending_out_minor, only_balance(WALLET_2).pending_in_minor) == (1_000, 1_000)
    assert only_balance(WALLET_1).posted_minor == 10_000 - 3_000


@pytest.mark.django_db
def test_the_command_prints_what_it_checked_and_succeeds_on_a_clean_ledger(book: dict[str, Any]) -> None:
    out = StringIO()

    call_command("ledger_check", stdout=out)

    assert "7 transactions, 15 entries" in out.getvalue()
    assert "no differences" in out.getvalue()


@pytest.mark.django_db
def test_an_empty_ledger_is_clean() -> None:
    report = ledger_integrity_report()

    assert report.is_clean
    assert report.entries_checked == 0


# --- transactions and entries -------------------------------------------------------


@pytest.mark.django_db
def test_an_entry_amount_changed_behind_the_ledgers_back_is_reported_everywhere_it_shows(
    book: dict[str, Any],
) -> None:
    wallet_leg = Entry.objects.get(transaction=book["deposit_1"], account__code=WALLET_1)
    run_sql("UPDATE ledger_entry SET amount_minor = -10001 WHERE id = %s", [wallet_leg.pk], bypass_triggers=True)

    report = ledger_integrity_report()

    assert found(report, "transaction_unbalanced") == [
        Finding(
            "transaction_unbalanced",
            f"transaction #{book['deposit_1'].pk}: entries sum to -0.01 USD, not zero",
            {"transaction_id": book["deposit_1"].pk, "currency": "USD", "total_minor": -1},
        )
    ]
    [posted] = found(report, "balance_posted_mismatch")
    assert posted.details == {
        "account": WALLET_1,
        "account_id": account_id(WALLET_1),
        "shard": 0,
        "posted_minor": 7_000,
        "expected_minor": 7_001,
    }
    [chain] = found(report, "entry_balance_chain_broken")
    assert chain.details["entry_id"] == wallet_leg.pk
    assert (chain.details["balance_after_minor"], chain.details["expected_minor"]) == (10_000, 10_001)
    assert report.codes() == {"transaction_unbalanced", "balance_posted_mismatch", "entry_balance_chain_broken"}
    assert "transaction_unbalanced" in check_command_fails()


@pytest.mark.django_db
def test_transactions_with_fewer_than_two_entries_are_reported(book: dict[str, Any]) -> None:
    bypass_ledger_triggers()
    empty = Transaction.objects.create(
        idempotency_key="empty", request_hash="x", kind="broken", event_at=timezone.now()
    )
    fee_legs = Entry.objects.filter(transaction__idempotency_key="provider-fee:1")
    cash_leg = fee_legs.get(account__code=CASH)
    run_sql("DELETE FROM ledger_entry WHERE id = %s", [cash_leg.pk], bypass_triggers=True)

    report = ledger_integrity_report()

    too_few = {
        finding.details["transaction_id"]: finding.details["entry_count"]
        for finding in found(report, "transaction_too_few_entries")
    }
    assert too_few == {empty.pk: 0, cash_leg.transaction_id: 1}
    assert [f.details["total_minor"] for f in found(report, "transaction_unbalanced")] == [30]
    assert "balance_version_mismatch" in report.codes()


@pytest.mark.django_db
def test_an_entry_in_another_currency_than_its_account_is_reported(book: dict[str, Any]) -> None:
    fees_leg = Entry.objects.get(transaction=book["transfer"], account__code=FEES)
    run_sql("UPDATE ledger_entry SET currency = 'EUR' WHERE id = %s", [fees_leg.pk], bypass_triggers=True)

    report = ledger_integrity_report()

    assert found(report, "entry_currency_mismatch") == [
        Finding(
            "entry_currency_mismatch",
            f"entry #{fees_leg.pk} (transaction #{book['transfer'].pk}) is in EUR on USD account {FEES}",
            {
                "entry_id": fees_leg.pk,
                "transaction_id": book["transfer"].pk,
                "account": FEES,
                "currency": "EUR",
                "account_currency": "USD",
            },
        )
    ]
    unbalanced = {(f.details["currency"], f.details["total_minor"]) for f in found(report, "transaction_unbalanced")}
    assert unbalanced == {("USD", 100), ("EUR", -100)}


# --- balance rows ---------------------------------------------------------------------


@pytest.mark.django_db
def test_a_posted_balance_that_differs_from_its_entries_is_the_only_finding(book: dict[str, Any]) -> None:
    run_sql("UPDATE ledger_balance SET posted_minor = posted_minor + 5 WHERE account_id = %s", [account_id(WALLET_2)])

    report = ledger_integrity_report()

    assert report.findings == [
        Finding(
            "balance_posted_mismatch",
            f"balance of {WALLET_2} shard 0: posted 27.05 USD, its entries sum to 27.00 USD",
            {
                "account": WALLET_2,
                "account_id": account_id(WALLET_2),
                "shard": 0,
                "posted_minor": 2_705,
                "expected_minor": 2_700,
            },
        )
    ]
    assert f"[balance_posted_mismatch] balance of {WALLET_2}" in check_command_fails()


@pytest.mark.django_db
def test_a_posted_balance_is_compared_in_the_accounts_normal_direction(book: dict[str, Any]) -> None:
    # Revenue is credit-normal: entries are negative, the balance row positive. Flip its sign.
    fees = account_id(FEES)
    run_sql(
        "UPDATE ledger_balance SET posted_minor = -posted_minor WHERE account_id = %s AND posted_minor <> 0", [fees]
    )

    report = ledger_integrity_report()

    recorded_vs_expected = sorted(
        (f.details["posted_minor"], f.details["expected_minor"]) for f in found(report, "balance_posted_mismatch")
    )
    assert sum(expected for _, expected in recorded_vs_expected) == 100 + 200
    assert all(recorded == -expected for recorded, expected in recorded_vs_expected)
    assert report.codes() == {"balance_posted_mismatch"}


@pytest.mark.django_db
def test_a_balance_version_that_differs_from_its_entries_is_reported(book: dict[str, Any]) -> None:
    run_sql("UPDATE ledger_balance SET version = version + 1 WHERE account_id = %s", [account_id(WALLET_1)])

    report = ledger_integrity_report()

    [finding] = report.findings
    assert finding.code == "balance_version_mismatch"
    assert finding.details == {
        "account": WALLET_1,
        "account_id": account_id(WALLET_1),
        "shard": 0,
        "version": 3,
        "entry_count": 2,
        "last_version": 2,
    }


@pytest.mark.django_db
def test_a_balance_row_with_another_sign_rule_than_its_account_is_reported(book: dict[str, Any]) -> None:
    run_sql(
        "UPDATE ledger_balance SET allow_negative = true WHERE account_id = %s",
        [account_id(WALLET_1)],
        bypass_triggers=True,
    )

    report = ledger_integrity_report()

    [finding] = report.findings
    assert finding.code == "balance_sign_rule_mismatch"
    assert (finding.details["allow_negative"], finding.details["account_allow_negative"]) == (True, False)


@pytest.mark.django_db
def test_entries_on_a_shard_without_a_balance_row_are_reported(book: dict[str, Any]) -> None:
    run_sql("DELETE FROM ledger_balance WHERE account_id = %s", [account_id(JPY_WALLET)])

    report = ledger_integrity_report()

    assert report.findings == [
        Finding(
            "entries_without_balance",
            f"1 entries on {JPY_WALLET} shard 0, which has no balance row",
            {"account": JPY_WALLET, "account_id": account_id(JPY_WALLET), "shard": 0, "entry_count": 1},
        )
    ]


# --- the running balance chain -------------------------------------------------------------


@pytest.mark.django_db
def test_a_wrong_balance_after_breaks_the_chain_at_that_entry_and_the_next(book: dict[str, Any]) -> None:
    first, second = Entry.objects.filter(account__code=WALLET_1).order_by("version_after")
    run_sql("UPDATE ledger_entry SET balance_after_minor = 9999 WHERE id = %s", [first.pk], bypass_triggers=True)

    report = ledger_integrity_report()

    chain = {
        f.details["entry_id"]: (f.details["balance_after_minor"], f.details["expected_minor"]) for f in report.findings
    }
    assert chain == {first.pk: (9_999, 10_000), second.pk: (7_000, 6_999)}
    assert report.codes() == {"entry_balance_chain_broken"}


@pytest.mark.django_db
def test_a_gap_in_a_shards_versions_is_reported(book: dict[str, Any]) -> None:
    last = Entry.objects.filter(account__code=WALLET_1).order_by("version_after").last()
    assert last is not None and last.version_after == 2
    run_sql("UPDATE ledger_entry SET version_after = 5 WHERE id = %s", [last.pk], bypass_triggers=True)

    report = ledger_integrity_report()

    [gap] = found(report, "entry_version_gap")
    assert (gap.details["entry_id"], gap.details["version_after"], gap.details["expected_version"]) == (last.pk, 5, 2)
    [version] = found(report, "balance_version_mismatch")
    assert (version.details["version"], version.details["entry_count"], version.details["last_version"]) == (2, 2, 5)


# --- pending holds and the no-negative rule ---------------------------------------------------


@pytest.mark.django_db
def test_a_hold_settled_without_releasing_its_pending_amounts_is_reported_on_both_sides(
    book: dict[str, Any],
) -> None:
    Hold.objects.filter(pk=book["pending_expense"].pk).update(status=Hold.Status.VOIDED)

    report = ledger_integrity_report()

    pending = {
        (f.details["account"], f.details["direction"]): (f.details["pending_minor"], f.details["expected_minor"])
        for f in report.findings
    }
    # Expense (debit-normal) is debited: its balance will rise. Cash (debit-normal) is credited: it will fall.
    assert pending == {(PROVIDER_FEES, "in"): (50, 0), (CASH, "out"): (50, 0)}
    assert report.codes() == {"balance_pending_mismatch"}


@pytest.mark.django_db
def test_pending_amounts_on_credit_normal_accounts_are_checked_in_their_direction(book: dict[str, Any]) -> None:
    run_sql(
        "UPDATE ledger_balance SET pending_out_minor = 0, pending_in_minor = 1000 WHERE account_id = %s",
        [account_id(WALLET_1)],
    )

    report = ledger_integrity_report()

    pending = {
        f.details["direction"]: (f.details["pending_minor"], f.details["expected_minor"]) for f in report.findings
    }
    assert pending == {"out": (0, 1_000), "in": (1_000, 0)}


@pytest.mark.django_db
def test_a_non_negative_account_below_zero_is_reported(book: dict[str, Any]) -> None:
    # The row's CHECK allows this only once the row claims it may go negative.
    run_sql(
        "UPDATE ledger_balance SET allow_negative = true, pending_out_minor = posted_minor + 1 WHERE account_id = %s",
        [account_id(WALLET_1)],
        bypass_triggers=True,
    )

    report = ledger_integrity_report()

    [negative] = found(report, "account_negative")
    assert negative.details == {
        "account": WALLET_1,
        "account_id": account_id(WALLET_1),
        "posted_minor": 7_000,
        "pending_out_minor": 7_001,
        "available_minor": -1,
    }
    assert report.codes() == {"account_negative", "balance_sign_rule_mismatch", "balance_pending_mismatch"}


# --- the command's exit status, with drift committed as it would be in production -------------


@pytest.mark.django_db(transaction=True)
def test_manage_py_ledger_check_exits_0_when_clean_and_1_on_committed_drift(
    book: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    execute_from_command_line(["manage.py", "ledger_check"])  # no SystemExit: status 0
    assert "no differences" in capsys.readouterr().out

    with transaction.atomic():
        run_sql(
            "UPDATE ledger_entry SET amount_minor = amount_minor * 2 WHERE transaction_id = %s AND amount_minor > 0",
            [book["transfer"].pk],
            bypass_triggers=True,
        )
    with pytest.raises(SystemExit) as exit_info:
        execute_from_command_line(["manage.py", "ledger_check"])

    assert exit_info.value.code == 1
    output = capsys.readouterr()
    assert "[transaction_unbalanced]" in output.out
    assert "difference" in output.err


# --- the Celery tasks -------------------------------------------------------------------------


class RecordingLogger:
    def __init__(self) -> None:
        self.calls: list[tuple[str, str, dict[str, Any]]] = []

    def error(self, event: str, **fields: Any) -> None:
        self.calls.append(("error", event, fields))

    def info(self, event: str, **fields: Any) -> None:
        self.calls.append(("info", event, fields))


@pytest.mark.django_db
def test_the_integrity_task_logs_every_finding_as_an_error_and_returns_their_count(
    book: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    logger = RecordingLogger()
    monkeypatch.setattr(tasks, "log", logger)
    assert tasks.check_integrity_task.delay().get() == 0
    assert [level for level, _, _ in logger.calls] == ["info"]

    run_sql(
        "UPDATE ledger_balance SET version = version + 1, posted_minor = posted_minor + 1 WHERE account_id = %s",
        [account_id(WALLET_2)],
    )
    logger.calls.clear()

    assert tasks.check_integrity_task.delay().get() == 2
    errors = [(event, fields["code"]) for level, event, fields in logger.calls if level == "error"]
    assert errors == [
        ("ledger.integrity_finding", "balance_posted_mismatch"),
        ("ledger.integrity_finding", "balance_version_mismatch"),
    ]


@pytest.mark.django_db
def test_the_expire_holds_task_expires_due_holds_and_releases_their_pending_amounts(book: dict[str, Any]) -> None:
    due = hold_create(
        idempotency_key="hold:due",
        debit_account_code=WALLET_2,
        credit_account_code=FEES,
        amount=usd(700),
        kind="hold",
        expires_at=timezone.now() - timedelta(minutes=1),
    )
    assert only_balance(WALLET_2).pending_out_minor == 700

    assert tasks.expire_holds_task.delay().get() == 1

    due.refresh_from_db()
    assert due.status == Hold.Status.EXPIRED
    assert only_balance(WALLET_2).pending_out_minor == 0
    assert ledger_integrity_report().is_clean


def test_holds_are_expired_every_minute_by_beat(settings: Any) -> None:
    [entry] = [entry for entry in settings.CELERY_BEAT_SCHEDULE.values() if entry["task"] == "ledger.expire_holds"]
    assert entry["schedule"].remaining_estimate(timezone.now()) <= timedelta(minutes=1)
