"""Races on real PostgreSQL with real threads: releases against the timeout job. Each deal ends with exactly
one outcome, the ledger stays consistent, and the sandbox shows no deal both paid out and given back."""

from __future__ import annotations

import threading
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import pytest
from django.db import connections

from core.errors import AppError
from escrow.deals import deal_release, deal_timeouts_run
from escrow.models import EscrowDeal
from ledger.integrity import ledger_integrity_report
from providers.breaker import shared_redis
from providers.sandbox import stripe as stripe_sandbox
from tests.escrow.factories_deals import UserFactory, escrow_balances, held_deal, overdue, seller, usd_card_fee

Status = EscrowDeal.Status
DEALS = 50


@pytest.fixture(autouse=True)
def _isolated(settings):
    prefix = settings.PROVIDER_STATE_KEY_PREFIX = f"test:escrow-race:{uuid.uuid4().hex}"
    settings.PROVIDER_RETRY_ATTEMPTS = 1
    settings.ESCROW_TIMEOUT_MAX_DEALS_PER_RUN = 1_000  # the breaker is not what this test is about
    yield
    client = shared_redis()
    for key in client.scan_iter(f"{prefix}:*") if client else []:
        client.delete(key)


@pytest.mark.django_db(transaction=True)
def test_a_release_racing_the_timeout_job_on_fifty_deals_ends_each_deal_once(sandbox):
    account = seller(sandbox, rate_bps=800)
    buyers = [UserFactory() for _ in range(5)]
    deals = [
        held_deal(buyers[n % 5], account, amount_minor=1_000 + 37 * n, timeout_policy="refund") for n in range(DEALS)
    ]
    overdue(*deals)  # every deal is due for a refund by the timeout job, and every buyer releases it
    outcomes: Counter[object] = Counter()
    start = threading.Barrier(9)

    def release(deal: EscrowDeal) -> None:
        try:
            deal_release(deal_id=deal.pk, actor=deal.buyer)
            outcomes["released"] += 1
        except AppError as error:
            outcomes[error.http_status] += 1
        finally:
            connections.close_all()

    def releases(share: list[EscrowDeal]) -> None:
        start.wait()
        for deal in share:
            release(deal)

    def timeouts() -> None:
        start.wait()
        try:
            for _ in range(3):  # the job runs again while releases continue, as beat would
                run = deal_timeouts_run()
                outcomes["timed_out"] += run.processed
                time.sleep(0.01)
        finally:
            connections.close_all()

    began = time.monotonic()
    with ThreadPoolExecutor(max_workers=9) as pool:
        futures = [pool.submit(releases, deals[n::8]) for n in range(8)] + [pool.submit(timeouts)]
        for future in futures:
            future.result()
    elapsed = time.monotonic() - began

    final = dict(EscrowDeal.objects.values_list("pk", "status"))
    ended = Counter(final.values())
    assert set(ended) <= {Status.TRANSFERRED, Status.REFUNDED}, ended
    assert ended[Status.TRANSFERRED] + ended[Status.REFUNDED] == DEALS
    assert outcomes["released"] == ended[Status.TRANSFERRED]
    assert outcomes["timed_out"] == ended[Status.REFUNDED]
    assert set(outcomes) <= {"released", "timed_out", 409, 423}, outcomes
    assert outcomes[409] + outcomes[423] == ended[Status.REFUNDED]  # each release that lost was told why

    state = stripe_sandbox.state_of(sandbox)
    transferred = {d.payment_intent_id for d in EscrowDeal.objects.filter(status=Status.TRANSFERRED)}
    voided = {pi for pi, intent in state.payment_intents.items() if intent["status"] == "canceled"}
    captured = {pi for pi, intent in state.payment_intents.items() if intent["status"] == "succeeded"}
    assert captured == transferred and not captured & voided and len(voided) == ended[Status.REFUNDED]
    assert not state.refunds  # nothing was captured and then refunded
    assert len(state.transfers) == ended[Status.TRANSFERRED]
    assert {t["transfer_group"] for t in state.transfers.values()} == {
        f"escrow-{d.pk}" for d in EscrowDeal.objects.filter(status=Status.TRANSFERRED)
    }

    report = ledger_integrity_report()
    assert report.is_clean, report.findings
    paid = EscrowDeal.objects.filter(status=Status.TRANSFERRED)
    commission = sum(d.commission_minor for d in paid)
    fees = sum(usd_card_fee(d.amount_minor) for d in paid)  # Stripe's fee on each captured deal, once
    assert escrow_balances() == {  # money conserved: the commission of paid deals stays with us, less Stripe's fees
        "authorized": 0, "held": 0, "payable": 0, "commission": commission, "clearing": commission - fees,
        "fees": fees,
    }  # fmt: skip
    print(f"\n50-deal race: {dict(ended)}, outcomes {dict(outcomes)}, {elapsed:.2f} s")


@pytest.mark.django_db(transaction=True)
def test_ten_concurrent_releases_of_one_deal_pay_the_seller_once(sandbox):
    buyer = UserFactory()
    deal = held_deal(buyer, seller(sandbox, rate_bps=800), amount_minor=10_000)
    outcomes: list[object] = []
    start = threading.Barrier(10)

    def release() -> None:
        start.wait()
        try:
            outcomes.append(deal_release(deal_id=deal.pk, actor=buyer).status)
        except AppError as error:
            outcomes.append(error.http_status)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=release) for _ in range(10)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert outcomes.count(Status.TRANSFERRED) == 1 and set(outcomes) <= {Status.TRANSFERRED, 409, 423}, outcomes
    assert sandbox.calls["stripe.transfers.create"] == sandbox.calls["stripe.payment_intents.capture"] == 1
    fee = 320  # 2.9% of 10,000 = 290, plus 30, posted once
    assert escrow_balances() == {
        "authorized": 0, "held": 0, "payable": 0, "commission": 800, "clearing": 800 - fee, "fees": fee,
    }  # fmt: skip
    assert ledger_integrity_report().is_clean
