"""PostgreSQL itself keeps the ledger rules: raw SQL that breaks one never commits."""

import pytest
from django.db import DatabaseError, connection, transaction

from core.money import Money
from ledger.models import Balance, Entry, Transaction
from ledger.services import credit, debit, transaction_post
from tests.ledger.factories import AccountFactory, fund, hot_account

pytestmark = [pytest.mark.django_db(transaction=True)]


@pytest.fixture(autouse=True)
def _postgres_only():
    if connection.vendor != "postgresql":
        pytest.skip("the database-enforced rules are PostgreSQL triggers and constraints")


@pytest.fixture
def accounts():
    clearing = hot_account()
    wallet = AccountFactory(code="user:1:wallet")
    fund(wallet, 1_000, source=clearing, key="fund")
    return clearing, wallet


def run_sql_in_one_transaction(*statements: tuple[str, list]) -> None:
    with transaction.atomic(), connection.cursor() as cursor:
        for sql, params in statements:
            cursor.execute(sql, params)


NEW_TRANSACTION = (
    "INSERT INTO ledger_transaction (idempotency_key, request_hash, kind, description, metadata, event_at, created_at)"
    " VALUES ('raw', '', 'raw', '', '{}', now(), now())"
)


def new_entries(*entries: tuple[int, int, str]) -> tuple[str, list]:
    """One INSERT of (account id, amount, currency) entries of the transaction just inserted."""
    rows = ", ".join(["(currval('ledger_transaction_id_seq'), %s, 0, %s, %s, 0, 90 + %s, now())"] * len(entries))
    params = [value for index, (account_id, amount, currency) in enumerate(entries) for value in
              (account_id, amount, currency, index)]  # fmt: skip
    return (
        "INSERT INTO ledger_entry (transaction_id, account_id, shard, amount_minor, currency, balance_after_minor,"
        f" version_after, created_at) VALUES {rows}",
        params,
    )


def test_unbalanced_transaction_is_refused(accounts):
    clearing, wallet = accounts
    with pytest.raises(DatabaseError, match="does not balance"):
        run_sql_in_one_transaction(
            (NEW_TRANSACTION, []), new_entries((clearing.pk, 500, "USD"), (wallet.pk, -499, "USD"))
        )
    assert not Transaction.objects.filter(idempotency_key="raw").exists()


def test_balanced_raw_transaction_commits(accounts):
    clearing, wallet = accounts
    run_sql_in_one_transaction((NEW_TRANSACTION, []), new_entries((clearing.pk, 500, "USD"), (wallet.pk, -500, "USD")))
    assert Entry.objects.filter(transaction__idempotency_key="raw").count() == 2


def test_a_transactions_entries_are_written_in_one_statement(accounts):
    clearing, wallet = accounts
    with pytest.raises(DatabaseError, match="does not balance"):
        run_sql_in_one_transaction(
            (NEW_TRANSACTION, []), new_entries((clearing.pk, 500, "USD")), new_entries((wallet.pk, -500, "USD"))
        )
    assert not Transaction.objects.filter(idempotency_key="raw").exists()


def test_nothing_unbalanced_joins_a_posted_transaction(accounts):
    clearing, _ = accounts
    posted = Transaction.objects.get(idempotency_key="fund")
    add = new_entries((clearing.pk, 7, "USD"))
    with pytest.raises(DatabaseError, match="does not balance"):
        run_sql_in_one_transaction((add[0].replace("currval('ledger_transaction_id_seq')", str(posted.pk)), add[1]))
    assert Entry.objects.filter(transaction=posted).count() == 2


def test_balance_is_checked_per_currency(accounts):
    clearing, _ = accounts
    php_clearing = hot_account(currency="PHP")
    with pytest.raises(DatabaseError, match="does not balance"):
        run_sql_in_one_transaction(
            (NEW_TRANSACTION, []), new_entries((clearing.pk, 500, "USD"), (php_clearing.pk, -500, "PHP"))
        )


def test_transaction_without_entries_fails_at_commit(accounts):
    with pytest.raises(DatabaseError, match="has no entries"):
        run_sql_in_one_transaction((NEW_TRANSACTION, []))


def test_entry_currency_must_match_its_account(accounts):
    clearing, wallet = accounts
    with pytest.raises(DatabaseError, match=f"names account {clearing.pk}, which does not exist in EUR"):
        run_sql_in_one_transaction(
            (NEW_TRANSACTION, []), new_entries((clearing.pk, 500, "EUR"), (wallet.pk, -500, "EUR"))
        )


def test_entry_must_name_an_existing_account_and_transaction(accounts):
    clearing, wallet = accounts
    with pytest.raises(DatabaseError, match="names account 999999, which does not exist in USD"):
        run_sql_in_one_transaction((NEW_TRANSACTION, []), new_entries((999_999, 500, "USD"), (wallet.pk, -500, "USD")))
    add = new_entries((clearing.pk, 500, "USD"), (wallet.pk, -500, "USD"))
    with pytest.raises(DatabaseError, match="names transaction 999999, which does not exist"):
        run_sql_in_one_transaction((add[0].replace("currval('ledger_transaction_id_seq')", "999999"), add[1]))


def test_accounts_are_never_deleted_nor_renumbered(accounts):
    _, wallet = accounts
    with pytest.raises(DatabaseError, match="cannot be deleted"):
        run_sql_in_one_transaction(("DELETE FROM ledger_account WHERE id = %s", [wallet.pk]))
    with pytest.raises(DatabaseError, match="id cannot change"):
        run_sql_in_one_transaction(("UPDATE ledger_account SET id = id + 100000 WHERE id = %s", [wallet.pk]))


@pytest.mark.parametrize(
    "sql",
    [
        "UPDATE ledger_entry SET amount_minor = amount_minor * 2",
        "DELETE FROM ledger_entry",
        "UPDATE ledger_transaction SET description = 'edited'",
        "DELETE FROM ledger_transaction",
    ],
)
def test_journal_is_append_only(accounts, sql):
    before = list(Entry.objects.values_list("id", "amount_minor"))
    with pytest.raises(DatabaseError, match="append-only"):
        run_sql_in_one_transaction((sql, []))
    assert list(Entry.objects.values_list("id", "amount_minor")) == before


def test_non_negative_balance_row_cannot_go_below_zero(accounts):
    _, wallet = accounts
    with pytest.raises(DatabaseError, match="ledger_balance_available_gte_0"):
        run_sql_in_one_transaction(("UPDATE ledger_balance SET posted_minor = -1 WHERE account_id = %s", [wallet.pk]))
    with pytest.raises(DatabaseError, match="ledger_balance_available_gte_0"):
        run_sql_in_one_transaction(
            ("UPDATE ledger_balance SET pending_out_minor = 1001 WHERE account_id = %s", [wallet.pk])
        )
    assert Balance.objects.get(account=wallet).posted_minor == 1_000


def test_balance_row_keeps_its_accounts_sign_rule(accounts):
    _, wallet = accounts
    with pytest.raises(DatabaseError, match="does not match its account"):
        run_sql_in_one_transaction(
            ("UPDATE ledger_balance SET allow_negative = true WHERE account_id = %s", [wallet.pk])
        )


@pytest.mark.parametrize(
    "change", ["currency = 'EUR'", "type = 'asset'", "allow_negative = true", "balance_shards = 4"]
)
def test_account_rules_never_change(accounts, change):
    _, wallet = accounts
    with pytest.raises(DatabaseError, match="cannot change"):
        run_sql_in_one_transaction((f"UPDATE ledger_account SET {change} WHERE id = %s", [wallet.pk]))


def test_audit_log_is_append_only(accounts):
    from core.services import audit_record

    audit_record(actor=None, action="test.action")
    with pytest.raises(DatabaseError, match="append-only"):
        run_sql_in_one_transaction(("UPDATE core_auditlog SET action = 'other'", []))
    with pytest.raises(DatabaseError, match="append-only"):
        run_sql_in_one_transaction(("DELETE FROM core_auditlog", []))


def test_services_still_post_through_the_rules(accounts):
    clearing, wallet = accounts
    transaction_post(
        idempotency_key="ok",
        kind="payout",
        legs=[debit(wallet.code, Money(400, "USD")), credit(clearing.code, Money(400, "USD"))],
    )
    assert Balance.objects.get(account=wallet).posted_minor == 600
