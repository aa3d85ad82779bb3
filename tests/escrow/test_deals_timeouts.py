"""The timeout job's circuit breaker on 200 expired deals: it stops at the count limit or at the amount
limit, processes exactly up to it, raises one staff alert, and the next run carries on."""

from __future__ import annotations

import time
import uuid

import pytest

from core.models import Alert
from escrow.deals import deal_timeouts_run
from escrow.models import EscrowDeal
from ledger.integrity import ledger_integrity_report
from providers.breaker import shared_redis
from tests.escrow.factories_deals import UserFactory, escrow_balances, held_deal, held_deals_bulk, overdue, seller

Status = EscrowDeal.Status
EXPIRED_DEALS = 200


@pytest.fixture(autouse=True)
def _isolated(settings):
    prefix = settings.PROVIDER_STATE_KEY_PREFIX = f"test:escrow-timeouts:{uuid.uuid4().hex}"
    settings.PROVIDER_RETRY_ATTEMPTS = 1
    yield
    client = shared_redis()
    for key in client.scan_iter(f"{prefix}:*") if client else []:
        client.delete(key)


@pytest.fixture
def expired_deals(sandbox):
    """200 held deals past deadline + grace, each 1,000 minor units (USD), refund on timeout."""
    began = time.monotonic()
    account, buyer = seller(sandbox), UserFactory()
    deals = held_deals_bulk(sandbox, buyer, account, count=EXPIRED_DEALS, amount_minor=1_000)
    overdue(*deals)
    print(f"\n{EXPIRED_DEALS} held deals made in {time.monotonic() - began:.2f} s")
    return deals


def refunded() -> int:
    return EscrowDeal.objects.filter(status=Status.REFUNDED).count()


@pytest.mark.django_db
def test_the_run_stops_at_the_count_limit_and_raises_an_alert(sandbox, expired_deals, settings):
    settings.ESCROW_TIMEOUT_MAX_DEALS_PER_RUN = 50
    began = time.monotonic()
    run = deal_timeouts_run()
    print(f"timeout run of 50 deals: {time.monotonic() - began:.2f} s")

    assert (run.processed, run.stopped_by, run.amounts) == (50, "count", {"USD": 50_000})
    assert refunded() == 50 and EscrowDeal.objects.filter(status=Status.HELD).count() == 150
    assert sandbox.calls["stripe.payment_intents.cancel"] == 50
    oldest = sorted(expired_deals, key=lambda d: (d.deadline, d.pk))[:50]
    assert {d.pk for d in oldest} == set(EscrowDeal.objects.filter(status=Status.REFUNDED).values_list("pk", flat=True))
    alert = Alert.objects.get(key="escrow:timeouts:breaker", status=Alert.Status.OPEN)
    assert "50 deals" in alert.title and alert.occurrences == 1

    assert deal_timeouts_run().processed == 50  # the next run carries on, and alerts again
    assert refunded() == 100 and Alert.objects.get(key="escrow:timeouts:breaker").occurrences == 2
    assert escrow_balances()["held"] == 100 * 1_000
    assert ledger_integrity_report().is_clean


@pytest.mark.django_db
def test_the_run_stops_at_the_amount_limit_and_raises_an_alert(sandbox, expired_deals, settings):
    settings.ESCROW_TIMEOUT_MAX_DEALS_PER_RUN = 1_000
    settings.ESCROW_TIMEOUT_MAX_AMOUNT_PER_RUN_MINOR = 25_500  # 25 deals of 1,000 fit, the 26th would not
    run = deal_timeouts_run()

    assert (run.processed, run.stopped_by, run.amounts) == (25, "amount", {"USD": 25_000})
    assert refunded() == 25 and sandbox.calls["stripe.payment_intents.cancel"] == 25
    alert = Alert.objects.get(key="escrow:timeouts:breaker", status=Alert.Status.OPEN)
    assert "$255.00" in alert.title
    assert escrow_balances()["held"] == 175 * 1_000


@pytest.mark.django_db
def test_a_run_within_both_limits_raises_no_alert(sandbox, buyer_and_three_expired):
    run = deal_timeouts_run()
    assert (run.processed, run.stopped_by) == (3, "")
    assert not Alert.objects.filter(key="escrow:timeouts:breaker").exists()


@pytest.fixture
def buyer_and_three_expired(sandbox):
    account, buyer = seller(sandbox), UserFactory()
    deals = [held_deal(buyer, account, amount_minor=1_000) for _ in range(3)]
    overdue(*deals)
    return deals
