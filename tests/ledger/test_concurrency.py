"""8 threads x 200 random transfers on real PostgreSQL transactions, then the bank invariant."""

import random
import threading
from collections import Counter

import pytest
from django.db import connection, connections

from core.errors import InsufficientFunds
from core.money import Money
from ledger.integrity import ledger_integrity_report
from ledger.models import Account, Balance, Entry
from ledger.selectors import account_balance
from ledger.services import credit, debit, hold_create, hold_post, hold_void, transaction_post
from tests.ledger.factories import AccountFactory, fund, hot_account

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]

THREADS = 8
TRANSFERS_PER_THREAD = 200
INITIAL_MINOR = 50_000


def make_accounts(currency: str) -> list[Account]:
    """Five accounts in one currency: three that may not go negative, two hot ones."""
    bank = hot_account(code="bank", currency=currency)
    accounts = []
    for i in range(5):
        hot = i >= 3
        account = AccountFactory(code=f"{currency}:{i}", currency=currency, allow_negative=hot)
        fund(account, INITIAL_MINOR, source=bank, key=f"fund:{account.code}")
        accounts.append(account)
    return accounts


def worker(seed: int, accounts: list[Account], outcomes: Counter, lock: threading.Lock) -> None:
    rng = random.Random(seed)
    local = Counter()
    try:
        for n in range(TRANSFERS_PER_THREAD):
            currency_accounts = rng.choice([accounts[:5], accounts[5:]])
            source, target = rng.sample(currency_accounts, 2)
            amount = Money(rng.randint(1, 30_000), source.currency)
            try:
                if n % 10 == 0:
                    hold = hold_create(
                        idempotency_key=f"h:{seed}:{n}",
                        debit_account_code=source.code,
                        credit_account_code=target.code,
                        amount=amount,
                        kind="hold",
                    )
                    hold_post(hold_id=hold.pk, amount=Money(amount.minor // 2 or 1, amount.currency))
                elif n % 10 == 1:
                    hold = hold_create(
                        idempotency_key=f"h:{seed}:{n}",
                        debit_account_code=source.code,
                        credit_account_code=target.code,
                        amount=amount,
                        kind="hold",
                    )
                    hold_void(hold_id=hold.pk)
                else:
                    transaction_post(
                        idempotency_key=f"t:{seed}:{n}",
                        kind="transfer",
                        legs=[debit(source.code, amount), credit(target.code, amount)],
                    )
                local["posted"] += 1
            except InsufficientFunds:
                local["refused"] += 1
            except Exception as error:  # recorded so the test fails with the cause
                local[f"error: {error!r}"] += 1
    finally:
        connections.close_all()
        with lock:
            outcomes.update(local)


def test_random_concurrent_transfers_keep_the_bank_invariant():
    if connection.vendor != "postgresql":
        pytest.skip("concurrency is tested on PostgreSQL")
    # Transfers below are between wallets (liabilities), all in the same direction,
    # so each currency's wallets always hold the total that was funded.
    accounts = make_accounts("USD") + make_accounts("PHP")
    totals_before = {c: 5 * INITIAL_MINOR for c in ("USD", "PHP")}

    outcomes: Counter = Counter()
    lock = threading.Lock()
    threads = [threading.Thread(target=worker, args=(seed, accounts, outcomes, lock)) for seed in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert [key for key in outcomes if key.startswith("error")] == []
    assert outcomes["posted"] + outcomes["refused"] == THREADS * TRANSFERS_PER_THREAD
    assert outcomes["posted"] > THREADS * TRANSFERS_PER_THREAD // 2
    assert outcomes["refused"] > 0, "amounts are drawn so that some transfers must be refused"

    for currency, total in totals_before.items():
        wallets = [a for a in accounts if a.currency == currency]
        assert sum(account_balance(a).posted.minor for a in wallets) == total
        assert sum(account_balance(a).pending_out.minor for a in wallets) == 0
        debits_minus_credits = sum(Entry.objects.filter(currency=currency).values_list("amount_minor", flat=True))
        assert debits_minus_credits == 0
    assert not Balance.objects.filter(allow_negative=False, posted_minor__lt=0).exists()
    for account in accounts:
        if not account.allow_negative:
            assert account_balance(account).available.minor >= 0
    report = ledger_integrity_report()
    assert report.findings == [], report.findings
