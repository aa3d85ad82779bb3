"""Property test: random postings, holds and reversals against a plain model of the ledger.

Every step really commits on PostgreSQL, so the deferred triggers run too.
After every step the balances equal the model's; after every run the
integrity check is clean.
"""

from collections import defaultdict

import pytest
from django.db import connection
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule, run_state_machine_as_test

from core.errors import AlreadyReversed, IdempotencyMismatch, InsufficientFunds, InvalidStateTransition
from core.money import Money
from ledger.integrity import ledger_integrity_report
from ledger.models import Account
from ledger.selectors import account_balance
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

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]

WALLETS = ["w0", "w1", "w2"]  # may not go negative
HOT = ["hot0", "bank"]  # may go negative
ACCOUNTS = WALLETS + HOT
amounts = st.integers(min_value=1, max_value=5_000)
accounts = st.sampled_from(ACCOUNTS)


def reset_ledger() -> None:
    with connection.cursor() as cursor:
        cursor.execute(
            "TRUNCATE ledger_entry, ledger_hold, ledger_transaction, ledger_balance, ledger_account, core_auditlog"
            " RESTART IDENTITY CASCADE"
        )


class LedgerMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        reset_ledger()
        for code in ACCOUNTS:
            # All liabilities: a debit lowers the balance, a credit raises it.
            account_create(
                code=code, name=code, type=Account.Type.LIABILITY, currency="USD", allow_negative=code in HOT
            )
        self.posted: dict[str, int] = defaultdict(int)
        self.pending_out: dict[str, int] = defaultdict(int)
        self.pending_in: dict[str, int] = defaultdict(int)
        self.holds: dict[int, tuple[str, str, int]] = {}  # pending holds: id -> (from, to, amount)
        self.postings: list[tuple[int, str, str, int, str, str]] = []  # (txn id, from, to, amount, key, kind)
        self.reversed: set[int] = set()
        self.counter = 0

    def key(self, prefix: str) -> str:
        self.counter += 1
        return f"{prefix}:{self.counter}"

    def can_leave(self, code: str, minor: int) -> bool:
        return code in HOT or self.posted[code] - self.pending_out[code] >= minor

    def move(self, source: str, target: str, minor: int) -> None:
        self.posted[source] -= minor
        self.posted[target] += minor

    @rule(source=accounts, dest=accounts, minor=amounts)
    def transfer(self, source: str, dest: str, minor: int) -> None:
        if source == dest:
            return
        key = self.key("t")
        legs = [debit(source, Money(minor, "USD")), credit(dest, Money(minor, "USD"))]
        if not self.can_leave(source, minor):
            with pytest.raises(InsufficientFunds):
                transaction_post(idempotency_key=key, kind="transfer", legs=legs)
            return
        txn = transaction_post(idempotency_key=key, kind="transfer", legs=legs)
        self.move(source, dest, minor)
        self.postings.append((txn.pk, source, dest, minor, key, "transfer"))

    @precondition(lambda self: self.postings)
    @rule(data=st.data())
    def replay_a_posting(self, data: st.DataObject) -> None:
        txn_id, source, target, minor, key, kind = data.draw(st.sampled_from(self.postings))
        legs = [debit(source, Money(minor, "USD")), credit(target, Money(minor, "USD"))]
        assert transaction_post(idempotency_key=key, kind=kind, legs=legs).pk == txn_id
        other = [debit(source, Money(minor + 1, "USD")), credit(target, Money(minor + 1, "USD"))]
        with pytest.raises(IdempotencyMismatch):
            transaction_post(idempotency_key=key, kind=kind, legs=other)

    @rule(source=accounts, dest=accounts, minor=amounts)
    def create_hold(self, source: str, dest: str, minor: int) -> None:
        if source == dest:
            return
        args = {"debit_account_code": source, "credit_account_code": dest, "amount": Money(minor, "USD")}
        if not self.can_leave(source, minor):
            with pytest.raises(InsufficientFunds):
                hold_create(idempotency_key=self.key("h"), kind="hold", **args)
            return
        hold = hold_create(idempotency_key=self.key("h"), kind="hold", **args)
        self.holds[hold.pk] = (source, dest, minor)
        self.pending_out[source] += minor
        self.pending_in[dest] += minor

    def release(self, hold_id: int) -> tuple[str, str, int]:
        source, dest, minor = self.holds.pop(hold_id)
        self.pending_out[source] -= minor
        self.pending_in[dest] -= minor
        return source, dest, minor

    @precondition(lambda self: self.holds)
    @rule(data=st.data(), fraction=st.integers(min_value=1, max_value=100))
    def post_hold(self, data: st.DataObject, fraction: int) -> None:
        hold_id = data.draw(st.sampled_from(sorted(self.holds)))
        minor = max(1, self.holds[hold_id][2] * fraction // 100)
        txn = hold_post(hold_id=hold_id, amount=Money(minor, "USD"))
        source, target, _ = self.release(hold_id)
        self.move(source, target, minor)
        self.postings.append((txn.pk, source, target, minor, f"hold:{hold_id}:post", "hold"))
        with pytest.raises(InvalidStateTransition):
            hold_void(hold_id=hold_id)

    @precondition(lambda self: self.holds)
    @rule(data=st.data())
    def void_hold(self, data: st.DataObject) -> None:
        hold_id = data.draw(st.sampled_from(sorted(self.holds)))
        hold_void(hold_id=hold_id)
        self.release(hold_id)

    @precondition(lambda self: self.postings)
    @rule(data=st.data())
    def reverse(self, data: st.DataObject) -> None:
        txn_id, source, target, minor, _, _ = data.draw(st.sampled_from(self.postings))
        if txn_id in self.reversed:
            with pytest.raises(AlreadyReversed):
                transaction_reverse(transaction_id=txn_id, reason="again")
            return
        if not self.can_leave(target, minor):
            with pytest.raises(InsufficientFunds):
                transaction_reverse(transaction_id=txn_id, reason="undo")
            return
        transaction_reverse(transaction_id=txn_id, reason="undo")
        self.move(target, source, minor)
        self.reversed.add(txn_id)

    @invariant()
    def balances_match_the_model(self) -> None:
        for code in ACCOUNTS:
            balance = account_balance(Account.objects.get(code=code))
            assert (balance.posted.minor, balance.pending_out.minor, balance.pending_in.minor) == (
                self.posted[code],
                self.pending_out[code],
                self.pending_in[code],
            ), code
            if code in WALLETS:
                assert balance.available.minor >= 0

    @invariant()
    def money_is_conserved(self) -> None:
        assert sum(self.posted.values()) == 0  # every movement is between these accounts

    def teardown(self) -> None:
        report = ledger_integrity_report()
        assert report.findings == [], report.findings


def test_ledger_rules_hold_under_random_operations():
    if connection.vendor != "postgresql":
        pytest.skip("runs against PostgreSQL's triggers")
    run_state_machine_as_test(
        LedgerMachine,
        settings=settings(
            max_examples=25,
            stateful_step_count=30,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
        ),
    )
