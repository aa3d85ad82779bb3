from datetime import timedelta

import pytest
from django.contrib.auth.models import Permission
from django.utils import timezone

from core.errors import (
    AlreadyReversed,
    IdempotencyMismatch,
    InsufficientFunds,
    InvalidRequest,
    InvalidStateTransition,
    NotFound,
    PermissionDenied,
)
from core.models import AuditLog
from core.money import Money
from ledger.models import Account, Balance, Entry, Hold, Transaction
from ledger.selectors import account_balance, account_balance_at, account_statement
from ledger.services import (
    account_create,
    credit,
    debit,
    hold_create,
    hold_post,
    hold_void,
    holds_expire_due,
    transaction_post,
    transaction_reverse,
)
from tests.ledger.factories import AccountFactory, fund, hot_account

pytestmark = pytest.mark.django_db

USD = "USD"


def usd(minor: int) -> Money:
    return Money(minor, USD)


@pytest.fixture
def clearing():
    return hot_account()


@pytest.fixture
def alice(clearing):
    account = AccountFactory(code="user:alice:wallet")
    fund(account, 10_000, source=clearing, key="fund:alice")
    return account


@pytest.fixture
def bob():
    return AccountFactory(code="user:bob:wallet")


def posted(account) -> int:
    return account_balance(account).posted.minor


def test_posting_moves_money_and_records_running_balances(alice, bob):
    txn = transaction_post(
        idempotency_key="t1", kind="transfer", legs=[debit(alice.code, usd(2_500)), credit(bob.code, usd(2_500))]
    )
    assert posted(alice) == 7_500
    assert posted(bob) == 2_500
    entries = {e.account_id: e for e in Entry.objects.filter(transaction=txn)}
    assert entries[alice.pk].amount_minor == 2_500  # debit positive
    assert entries[alice.pk].balance_after_minor == 7_500
    assert entries[alice.pk].version_after == 2
    assert entries[bob.pk].amount_minor == -2_500
    assert entries[bob.pk].balance_after_minor == 2_500
    assert entries[bob.pk].version_after == 1


def test_same_key_same_request_returns_the_first_transaction(alice, bob):
    legs = [debit(alice.code, usd(100)), credit(bob.code, usd(100))]
    first = transaction_post(idempotency_key="t-replay", kind="transfer", legs=legs)
    again = transaction_post(idempotency_key="t-replay", kind="transfer", legs=legs)
    assert again.pk == first.pk
    assert posted(bob) == 100
    assert Entry.objects.filter(transaction__idempotency_key="t-replay").count() == 2


def test_same_key_different_request_is_refused(alice, bob):
    transaction_post(
        idempotency_key="t-x", kind="transfer", legs=[debit(alice.code, usd(100)), credit(bob.code, usd(100))]
    )
    with pytest.raises(IdempotencyMismatch) as error:
        transaction_post(
            idempotency_key="t-x", kind="transfer", legs=[debit(alice.code, usd(101)), credit(bob.code, usd(101))]
        )
    assert error.value.http_status == 422
    assert posted(bob) == 100


@pytest.mark.parametrize(
    ("legs_of", "error_type"),
    [
        (lambda a, b: [debit(a, usd(100)), credit(b, usd(99))], InvalidRequest),
        (lambda a, b: [debit(a, usd(100))], InvalidRequest),
        (lambda a, b: [debit(a, usd(0)), credit(b, usd(0))], InvalidRequest),
        (lambda a, b: [debit(a, Money(100, "EUR")), credit(b, Money(100, "EUR"))], InvalidRequest),
        (lambda a, b: [debit(a, usd(100)), credit("no-such-account", usd(100))], NotFound),
    ],
    ids=["unbalanced", "one-leg", "zero", "wrong-currency", "unknown-account"],
)
def test_bad_postings_are_refused_and_write_nothing(alice, bob, legs_of, error_type):
    before = Transaction.objects.count()
    with pytest.raises(error_type) as error:
        transaction_post(idempotency_key="bad", kind="transfer", legs=legs_of(alice.code, bob.code))
    assert error.value.user_message and error.value.action_required
    assert Transaction.objects.count() == before
    assert posted(alice) == 10_000


def test_insufficient_funds_refuses_and_leaves_the_key_free(alice, bob):
    with pytest.raises(InsufficientFunds) as error:
        transaction_post(
            idempotency_key="big", kind="transfer", legs=[debit(alice.code, usd(10_001)), credit(bob.code, usd(10_001))]
        )
    assert error.value.details["available_minor"] == 10_000
    assert error.value.details["requested_minor"] == 10_001
    assert not Transaction.objects.filter(idempotency_key="big").exists()
    transaction_post(
        idempotency_key="big", kind="transfer", legs=[debit(alice.code, usd(10_000)), credit(bob.code, usd(10_000))]
    )
    assert posted(alice) == 0


def test_hot_accounts_go_negative_and_spread_over_shards(clearing, bob):
    for i in range(40):
        transaction_post(
            idempotency_key=f"in:{i}", kind="deposit", legs=[debit(clearing.code, usd(10)), credit(bob.code, usd(10))]
        )
        transaction_post(
            idempotency_key=f"out:{i}",
            kind="fee",
            legs=[debit(bob.code, usd(10)), credit(clearing.code, usd(25)), debit(clearing.code, usd(15))],
        )
    assert posted(clearing) == 40 * 10 - 40 * 25 + 40 * 15
    shards_used = set(Entry.objects.filter(account=clearing).values_list("shard", flat=True))
    assert len(shards_used) > 1
    assert Balance.objects.filter(account=clearing).count() == clearing.balance_shards > 1
    assert posted(bob) == 0


def test_non_hot_accounts_never_go_negative(bob, clearing):
    with pytest.raises(InsufficientFunds):
        transaction_post(
            idempotency_key="neg", kind="transfer", legs=[debit(bob.code, usd(1)), credit(clearing.code, usd(1))]
        )


def test_account_create_is_idempotent_and_refuses_conflicting_settings():
    first = account_create(code="a", name="A", type="asset", currency="USD")
    assert account_create(code="a", name="A again", type="asset", currency="USD").pk == first.pk
    with pytest.raises(InvalidRequest):
        account_create(code="a", name="A", type="asset", currency="EUR")
    with pytest.raises(InvalidRequest):
        account_create(code="b", name="B", type="asset", currency="usd")
    with pytest.raises(InvalidRequest):
        account_create(code="c", name="C", type="cash", currency="USD")


# --- holds ----------------------------------------------------------------------------


def test_hold_reserves_available_balance(alice, bob):
    hold = hold_create(
        idempotency_key="h1",
        debit_account_code=alice.code,
        credit_account_code=bob.code,
        amount=usd(6_000),
        kind="escrow",
    )
    balance = account_balance(alice)
    assert (balance.posted.minor, balance.pending_out.minor, balance.available.minor) == (10_000, 6_000, 4_000)
    assert account_balance(bob).pending_in.minor == 6_000
    with pytest.raises(InsufficientFunds):
        transaction_post(
            idempotency_key="t", kind="transfer", legs=[debit(alice.code, usd(4_001)), credit(bob.code, usd(4_001))]
        )
    with pytest.raises(InsufficientFunds):
        hold_create(
            idempotency_key="h2",
            debit_account_code=alice.code,
            credit_account_code=bob.code,
            amount=usd(4_001),
            kind="escrow",
        )
    assert hold.status == Hold.Status.PENDING


def test_hold_create_is_idempotent(alice, bob):
    args = {"debit_account_code": alice.code, "credit_account_code": bob.code, "kind": "escrow"}
    first = hold_create(idempotency_key="h", amount=usd(500), **args)
    assert hold_create(idempotency_key="h", amount=usd(500), **args).pk == first.pk
    assert account_balance(alice).pending_out.minor == 500
    with pytest.raises(IdempotencyMismatch):
        hold_create(idempotency_key="h", amount=usd(501), **args)


def test_partial_post_moves_part_and_releases_the_rest(alice, bob):
    hold = hold_create(
        idempotency_key="h",
        debit_account_code=alice.code,
        credit_account_code=bob.code,
        amount=usd(6_000),
        kind="escrow",
    )
    txn = hold_post(hold_id=hold.pk, amount=usd(2_000))
    alice_balance, bob_balance = account_balance(alice), account_balance(bob)
    assert (alice_balance.posted.minor, alice_balance.pending_out.minor) == (8_000, 0)
    assert (bob_balance.posted.minor, bob_balance.pending_in.minor) == (2_000, 0)
    hold.refresh_from_db()
    assert (hold.status, hold.posted_minor, hold.posted_transaction_id) == (Hold.Status.POSTED, 2_000, txn.pk)
    assert hold_post(hold_id=hold.pk, amount=usd(2_000)).pk == txn.pk  # replay
    with pytest.raises(InvalidStateTransition):
        hold_post(hold_id=hold.pk, amount=usd(3_000))
    with pytest.raises(InvalidStateTransition):
        hold_void(hold_id=hold.pk)


def test_post_more_than_held_is_refused(alice, bob):
    hold = hold_create(
        idempotency_key="h", debit_account_code=alice.code, credit_account_code=bob.code, amount=usd(100), kind="escrow"
    )
    for bad in (usd(101), usd(0), Money(100, "EUR")):
        with pytest.raises(InvalidRequest):
            hold_post(hold_id=hold.pk, amount=bad)
    assert Hold.objects.get(pk=hold.pk).status == Hold.Status.PENDING


def test_void_releases_and_is_repeatable(alice, bob):
    hold = hold_create(
        idempotency_key="h", debit_account_code=alice.code, credit_account_code=bob.code, amount=usd(700), kind="escrow"
    )
    hold_void(hold_id=hold.pk)
    hold_void(hold_id=hold.pk)
    assert account_balance(alice).available.minor == 10_000
    assert account_balance(bob).pending_in.minor == 0
    with pytest.raises(InvalidStateTransition):
        hold_post(hold_id=hold.pk)


def test_due_holds_expire(alice, bob):
    now = timezone.now()
    due = hold_create(
        idempotency_key="due", debit_account_code=alice.code, credit_account_code=bob.code, amount=usd(100),
        kind="escrow", expires_at=now - timedelta(seconds=1),
    )  # fmt: skip
    later = hold_create(
        idempotency_key="later", debit_account_code=alice.code, credit_account_code=bob.code, amount=usd(200),
        kind="escrow", expires_at=now + timedelta(days=7),
    )  # fmt: skip
    assert holds_expire_due(now=now) == 1
    assert Hold.objects.get(pk=due.pk).status == Hold.Status.EXPIRED
    assert Hold.objects.get(pk=later.pk).status == Hold.Status.PENDING
    assert account_balance(alice).pending_out.minor == 200


# --- reversals ------------------------------------------------------------------------


def test_reversal_restores_balances_once_and_is_audited(alice, bob, django_user_model):
    staff = django_user_model.objects.create_user("finance", is_staff=True)
    with pytest.raises(PermissionDenied):
        transaction_reverse(transaction_id=1, reason="no permission yet", actor=staff)
    staff.user_permissions.add(Permission.objects.get(codename="reverse_transaction"))
    staff = django_user_model.objects.get(pk=staff.pk)  # fresh permission cache
    txn = transaction_post(
        idempotency_key="t", kind="transfer", legs=[debit(alice.code, usd(300)), credit(bob.code, usd(300))]
    )
    reversal = transaction_reverse(transaction_id=txn.pk, reason="sent to the wrong wallet", actor=staff)
    assert reversal.reverses_id == txn.pk
    assert (posted(alice), posted(bob)) == (10_000, 0)
    audit = AuditLog.objects.get(action="ledger.transaction.reverse")
    assert (audit.actor, audit.object_id, audit.after["reversal_id"]) == (staff, str(txn.pk), reversal.pk)
    with pytest.raises(AlreadyReversed) as error:
        transaction_reverse(transaction_id=txn.pk, reason="again")
    assert error.value.details["reversal_id"] == reversal.pk
    with pytest.raises(InvalidStateTransition):
        transaction_reverse(transaction_id=reversal.pk, reason="undo the undo")
    with pytest.raises(NotFound):
        transaction_reverse(transaction_id=999_999, reason="none")


def test_reversal_that_would_overdraw_is_refused(alice, bob):
    txn = transaction_post(
        idempotency_key="t", kind="transfer", legs=[debit(alice.code, usd(300)), credit(bob.code, usd(300))]
    )
    transaction_post(
        idempotency_key="spend", kind="transfer", legs=[debit(bob.code, usd(300)), credit(alice.code, usd(300))]
    )
    with pytest.raises(InsufficientFunds):
        transaction_reverse(transaction_id=txn.pk, reason="too late")
    assert not Transaction.objects.filter(reverses=txn).exists()


# --- reads ----------------------------------------------------------------------------


def test_point_in_time_balance_and_statement(alice, bob, clearing):
    start = timezone.now()
    for i, minor in enumerate([100, 250, 50]):
        transaction_post(
            idempotency_key=f"s{i}", kind="transfer", legs=[debit(alice.code, usd(minor)), credit(bob.code, usd(minor))]
        )
    middle = Entry.objects.filter(account=bob).order_by("version_after")[1].created_at
    assert account_balance_at(bob, start).minor == 0
    assert account_balance_at(bob, middle).minor == 350
    assert account_balance_at(bob, timezone.now()).minor == 400
    assert account_balance_at(clearing, timezone.now()).minor == posted(clearing) == 10_000

    statement = account_statement(bob, since=start, until=timezone.now())
    assert statement.opening.minor == 0
    assert [line.amount.minor for line in statement.lines] == [100, 250, 50]
    assert [line.balance_after.minor for line in statement.lines] == [100, 350, 400]
    assert statement.closing.minor == 400


@pytest.mark.django_db(transaction=True)
def test_remembered_account_facts_never_misdirect_a_posting():
    """Facts are remembered after a commit; after the table is rebuilt under them, the write
    is refused by the database, the facts are read again and the money lands where asked."""
    from django.db import connection

    def build(first: str, second: str) -> None:
        clearing = hot_account()
        for code in (first, second):
            fund(AccountFactory(code=code), 1_000, source=clearing, key=f"fund:{code}")

    build("user:a", "user:b")
    transaction_post(idempotency_key="warm", kind="t", legs=[debit("user:a", usd(1)), credit("user:b", usd(1))])
    tables = ["ledger_entry", "ledger_hold", "ledger_transaction", "ledger_balance", "ledger_account"]
    with connection.cursor() as cursor:  # ids restart: user:b now gets user:a's old id, and the reverse
        if connection.vendor == "postgresql":
            cursor.execute(f"TRUNCATE {', '.join(tables)} RESTART IDENTITY CASCADE")
        else:
            for table in tables:
                cursor.execute(f"DELETE FROM {table}")
            cursor.execute("DELETE FROM sqlite_sequence")
    build("user:b", "user:a")

    transaction_post(idempotency_key="after", kind="t", legs=[debit("user:a", usd(300)), credit("user:b", usd(300))])

    balances = {a.code: posted(a) for a in Account.objects.filter(code__in=["user:a", "user:b"])}
    assert balances == {"user:a": 700, "user:b": 1_300}


def test_a_hold_that_fails_to_expire_does_not_stop_the_sweep(alice, bob, monkeypatch):
    from core.errors import LedgerContention
    from ledger import services

    past = timezone.now() - timedelta(minutes=1)
    holds = [
        hold_create(
            idempotency_key=f"due:{i}", debit_account_code=alice.code, credit_account_code=bob.code, amount=usd(100),
            kind="escrow", expires_at=past,
        )
        for i in range(2)
    ]  # fmt: skip
    real_expire = services.hold_expire

    def expire_failing_first(*, hold_id: int) -> Hold:
        if hold_id == holds[0].pk:
            raise LedgerContention("busy")
        return real_expire(hold_id=hold_id)

    monkeypatch.setattr(services, "hold_expire", expire_failing_first)
    assert holds_expire_due() == 1
    statuses = dict(Hold.objects.values_list("pk", "status"))
    assert statuses == {holds[0].pk: Hold.Status.PENDING, holds[1].pk: Hold.Status.EXPIRED}


def test_many_holds_reserve_at_once_all_or_nothing(alice, bob):
    from ledger.services import HoldRequest, holds_create_many

    def requests(*amounts: int) -> list[HoldRequest]:
        return [
            HoldRequest(
                idempotency_key=f"many:{n}",
                debit_account_code=alice.code,
                credit_account_code=bob.code,
                amount=usd(minor),
                kind="payout",
            )
            for n, minor in enumerate(amounts)
        ]

    with pytest.raises(InsufficientFunds):  # 10,001 > 10,000 available: nothing is reserved
        holds_create_many(requests=requests(4_000, 6_001))
    assert not Hold.objects.exists()
    holds = holds_create_many(requests=requests(4_000, 5_000))
    assert [h.amount_minor for h in holds] == [4_000, 5_000]
    assert account_balance(alice).available.minor == 1_000
    assert account_balance(bob).pending_in.minor == 9_000
    again = holds_create_many(requests=requests(4_000, 5_000))  # same keys, same requests
    assert [h.pk for h in again] == [h.pk for h in holds]
    assert account_balance(alice).pending_out.minor == 9_000
    with pytest.raises(IdempotencyMismatch):
        holds_create_many(requests=requests(4_000, 5_001))
    hold_post(hold_id=holds[0].pk)
    assert account_balance(bob).posted.minor == 4_000
