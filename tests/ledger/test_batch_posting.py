"""Posting in bulk (ledger.services.batch): many transactions in one call, each idempotent by its own key.

Runs on PostgreSQL (ledger_post_many) and on SQLite (the Python writer); the database rules and the
concurrency test are PostgreSQL's.
"""

import random
import threading

import pytest
from django.db import DatabaseError, connection, connections, transaction
from django.utils import timezone

from core.errors import IdempotencyMismatch, InsufficientFunds, InvalidRequest, InvalidStateTransition
from core.money import Money
from ledger.batch import BatchPlan, apply_batch
from ledger.integrity import ledger_integrity_report
from ledger.models import Balance, Entry, Hold, Transaction
from ledger.selectors import account_balance
from ledger.services import (
    HoldPosting,
    PostingRequest,
    credit,
    debit,
    hold_create,
    holds_settle_many,
    transaction_post,
    transactions_post_many,
)
from ledger.services.accounts import _account_facts
from ledger.writer import TransactionRow, WritePlan
from tests.ledger.factories import AccountFactory, fund, hot_account

pytestmark = pytest.mark.django_db

USD = "USD"


def usd(minor: int) -> Money:
    return Money(minor, USD)


def transfer(key: str, source: str, target: str, minor: int) -> PostingRequest:
    return PostingRequest(key, "transfer", [debit(source, usd(minor)), credit(target, usd(minor))])


def posted(account) -> int:
    return account_balance(account).posted.minor


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


def assert_balances_are_sums_of_entries() -> None:
    report = ledger_integrity_report()
    assert report.findings == [], report.findings


# --- transactions ------------------------------------------------------------------------------------


def test_a_batch_posts_one_transaction_per_key_in_request_order(alice, bob):
    requests = [transfer(f"t:{n}", alice.code, bob.code, 100 + n) for n in (3, 1, 2)]

    transactions = transactions_post_many(requests=requests)

    assert [t.idempotency_key for t in transactions] == ["t:3", "t:1", "t:2"]
    assert [sorted(t.entries.values_list("amount_minor", flat=True)) for t in transactions] == [
        [-103, 103],
        [-101, 101],
        [-102, 102],
    ]
    assert posted(alice) == 10_000 - 306 and posted(bob) == 306
    assert_balances_are_sums_of_entries()


def test_replaying_a_batch_returns_the_same_transactions_and_posts_nothing(alice, bob):
    requests = [transfer(f"t:{n}", alice.code, bob.code, 100) for n in range(5)]
    first = transactions_post_many(requests=requests)
    entries = Entry.objects.count()

    again = transactions_post_many(requests=requests)

    assert [t.pk for t in again] == [t.pk for t in first]
    assert Entry.objects.count() == entries
    assert posted(alice) == 9_500 and posted(bob) == 500
    assert_balances_are_sums_of_entries()


def test_a_batch_mixing_new_and_posted_keys_posts_only_the_new(alice, bob):
    earlier = transaction_post(
        idempotency_key="t:0", kind="transfer", legs=transfer("t:0", alice.code, bob.code, 100).legs
    )

    transactions = transactions_post_many(requests=[transfer(f"t:{n}", alice.code, bob.code, 100) for n in range(3)])

    assert transactions[0].pk == earlier.pk
    assert len({t.pk for t in transactions}) == 3
    assert Transaction.objects.filter(idempotency_key__startswith="t:").count() == 3
    assert posted(alice) == 9_700 and posted(bob) == 300
    assert_balances_are_sums_of_entries()


def test_a_key_given_twice_in_a_batch_is_posted_once(alice, bob):
    same = transfer("t:same", alice.code, bob.code, 100)

    first, second = transactions_post_many(requests=[same, same])

    assert first.pk == second.pk
    assert posted(bob) == 100


def test_a_posted_key_with_other_legs_refuses_the_whole_batch(alice, bob):
    transactions_post_many(requests=[transfer("t:0", alice.code, bob.code, 100)])

    with pytest.raises(IdempotencyMismatch):
        transactions_post_many(
            requests=[transfer("t:new", alice.code, bob.code, 50), transfer("t:0", alice.code, bob.code, 999)]
        )

    assert not Transaction.objects.filter(idempotency_key="t:new").exists()
    assert posted(bob) == 100


def test_an_unbalanced_transaction_refuses_the_whole_batch(alice, bob):
    unbalanced = PostingRequest("t:bad", "transfer", [debit(alice.code, usd(100)), credit(bob.code, usd(99))])

    with pytest.raises(InvalidRequest, match="debits and credits differ"):
        transactions_post_many(requests=[transfer("t:good", alice.code, bob.code, 100), unbalanced])

    assert not Transaction.objects.filter(idempotency_key__startswith="t:").exists()


def test_a_batch_that_would_overdraw_at_any_step_is_refused_whole(alice, bob, clearing):
    """Bob receives 50 only after he would have paid 80: in key order that takes him below zero on the way."""
    requests = [transfer("t:1", bob.code, clearing.code, 80), transfer("t:2", alice.code, bob.code, 50)]
    fund(bob, 40, source=clearing, key="fund:bob")

    with pytest.raises(InsufficientFunds) as refused:
        transactions_post_many(requests=requests)

    assert refused.value.details["account"] == bob.code
    assert not Transaction.objects.filter(idempotency_key__in=["t:1", "t:2"]).exists()
    assert posted(alice) == 10_000 and posted(bob) == 40
    # In the other order every step keeps Bob at or above zero: the same legs are accepted.
    transactions_post_many(
        requests=[transfer("t:1", alice.code, bob.code, 50), transfer("t:2", bob.code, clearing.code, 80)]
    )
    assert posted(bob) == 10


def test_a_hot_account_takes_its_entries_on_its_shards(alice, clearing):
    transactions_post_many(requests=[transfer(f"t:{n}", alice.code, clearing.code, 10) for n in range(40)])

    entries = Entry.objects.filter(account=clearing, transaction__idempotency_key__startswith="t:")
    assert entries.count() == 40
    assert len(set(entries.values_list("shard", flat=True))) > 1, "postings spread over the hot account's shards"
    assert_balances_are_sums_of_entries()


# --- holds -------------------------------------------------------------------------------------------


def hold(key: str, source, target, minor: int) -> Hold:
    """Reserve money to move from one wallet to another (wallets are liabilities: debiting one lowers it)."""
    return hold_create(
        idempotency_key=key,
        debit_account_code=source.code,
        credit_account_code=target.code,
        amount=usd(minor),
        kind="hold",
    )


def test_holds_posted_and_voided_in_one_call(alice, bob):
    paid, kept, released = (hold(f"h:{n}", alice, bob, 1_000) for n in range(3))
    assert account_balance(alice).available.minor == 7_000

    posted_ids = holds_settle_many(
        post=[HoldPosting(paid.pk, {"reference": "r1"}), HoldPosting(kept.pk)], void=[released.pk]
    )

    assert set(posted_ids) == {paid.pk, kept.pk}
    paid.refresh_from_db()
    released.refresh_from_db()
    assert paid.status == Hold.Status.POSTED and paid.posted_transaction_id == posted_ids[paid.pk]
    assert paid.posted_transaction.idempotency_key == f"hold:{paid.pk}:post"
    assert paid.posted_transaction.metadata == {"reference": "r1", "hold_id": paid.pk}
    assert released.status == Hold.Status.VOIDED
    balance = account_balance(alice)
    assert (balance.posted.minor, balance.pending_out.minor, balance.available.minor) == (8_000, 0, 8_000)
    assert posted(bob) == 2_000
    assert_balances_are_sums_of_entries()


def test_a_posted_hold_keeps_its_own_kind_description_and_metadata(alice, bob):
    reserved = hold_create(
        idempotency_key="h:described", debit_account_code=alice.code, credit_account_code=bob.code,
        amount=usd(700), kind="payout", description="item 7", metadata={"item": 7, "batch": "b-1"},
    )  # fmt: skip

    posted_ids = holds_settle_many(post=[HoldPosting(reserved.pk, {"provider_reference": "PI-7"})])

    posting = Transaction.objects.get(pk=posted_ids[reserved.pk])
    assert (posting.kind, posting.description) == ("payout", "item 7")
    assert posting.metadata == {"item": 7, "batch": "b-1", "provider_reference": "PI-7", "hold_id": reserved.pk}
    assert posted(alice) == 9_300 and posted(bob) == 700


def test_settling_holds_again_changes_nothing(alice, bob):
    paid, released = hold("h:paid", alice, bob, 1_000), hold("h:void", alice, bob, 500)
    first = holds_settle_many(post=[HoldPosting(paid.pk)], void=[released.pk])
    entries = Entry.objects.count()

    again = holds_settle_many(post=[HoldPosting(paid.pk)], void=[released.pk])

    assert again == first
    assert Entry.objects.count() == entries
    assert posted(alice) == 9_000 and account_balance(alice).pending_out.minor == 0


def test_a_settled_hold_refuses_the_whole_call(alice, bob):
    voided, pending = hold("h:voided", alice, bob, 1_000), hold("h:pending", alice, bob, 500)
    holds_settle_many(void=[voided.pk])

    with pytest.raises(InvalidStateTransition):
        holds_settle_many(post=[HoldPosting(pending.pk), HoldPosting(voided.pk)])

    pending.refresh_from_db()
    assert pending.status == Hold.Status.PENDING
    assert posted(bob) == 0


# --- what PostgreSQL enforces ---------------------------------------------------------------------------


def unbalanced_batch(alice, bob) -> BatchPlan:
    """A plan built by hand, past the services' checks: 100 debited, 99 credited."""
    accounts = _account_facts([alice.code, bob.code])
    plan = WritePlan(
        transaction=TransactionRow("raw:unbalanced", "", "raw", "", {}, timezone.now(), timezone.now(), None),
        accounts=list(accounts.values()),
    )
    plan.add_entry(account_id=alice.pk, shard=0, amount_minor=100, currency=USD, normal_sign=-1)
    plan.add_entry(account_id=bob.pk, shard=0, amount_minor=-99, currency=USD, normal_sign=-1)
    return BatchPlan(accounts=list(accounts.values()), transactions=[plan])


@pytest.mark.django_db(transaction=True)
def test_the_database_refuses_an_unbalanced_transaction_in_a_batch(alice, bob):
    if connection.vendor != "postgresql":
        pytest.skip("the database-enforced rules are PostgreSQL triggers and constraints")

    with pytest.raises(DatabaseError, match="does not balance"), transaction.atomic():
        apply_batch(unbalanced_batch(alice, bob))

    assert not Transaction.objects.filter(idempotency_key="raw:unbalanced").exists()
    assert posted(alice) == 10_000 and posted(bob) == 0


THREADS = 6
BATCHES_PER_THREAD = 8
BATCH_SIZE = 25


def post_batches(seed: int, wallets: list, hot, errors: list) -> None:
    """Batches of wallet transfers and one-unit postings to the hot account; each batch also carries keys every
    thread sends alike (one posts them, the others get them back), and every other batch is sent twice."""
    rng = random.Random(seed)
    try:
        for n in range(BATCHES_PER_THREAD):
            requests = [transfer(f"shared:{n}:{m}", wallets[0].code, hot.code, 1) for m in range(5)]
            for m in range(BATCH_SIZE):
                source, target = rng.sample(wallets, 2)
                requests.append(transfer(f"w:{seed}:{n}:{m}", source.code, target.code, rng.randint(1, 400)))
                requests.append(transfer(f"h:{seed}:{n}:{m}", source.code, hot.code, 1))
            try:
                first = transactions_post_many(requests=requests)
            except InsufficientFunds:
                continue
            if n % 2 and [t.pk for t in transactions_post_many(requests=requests)] != [t.pk for t in first]:
                errors.append(f"replay of batch {seed}:{n} returned other transactions")
    except Exception as error:  # recorded so the test fails with the cause
        errors.append(repr(error))
    finally:
        connections.close_all()


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_concurrent_batches_on_a_hot_account_keep_every_balance_the_sum_of_its_entries(clearing):
    if connection.vendor != "postgresql":
        pytest.skip("concurrency is tested on PostgreSQL")
    hot = hot_account(code="platform:revenue", type="revenue")
    wallets = [AccountFactory(code=f"user:{n}:wallet") for n in range(6)]
    for wallet in wallets:
        fund(wallet, 20_000, source=clearing, key=f"fund:{wallet.code}")
    errors: list[str] = []

    threads = [threading.Thread(target=post_batches, args=(seed, wallets, hot, errors)) for seed in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert errors == []
    to_hot = Entry.objects.filter(account=hot).count()
    assert to_hot > THREADS * BATCH_SIZE, "most batches went through"
    assert posted(hot) == to_hot  # one minor unit per posting to the hot account
    assert sum(posted(w) for w in wallets) == 6 * 20_000 - to_hot
    assert not Balance.objects.filter(allow_negative=False, posted_minor__lt=0).exists()
    assert_balances_are_sums_of_entries()
