"""The Stripe sandbox's connected accounts, through the real client over HTTP, and escrow steps whose
outcome was unknown being finished by the protocol's sweeper (a look-up, then the same key if never done)."""

from __future__ import annotations

import uuid
from datetime import timedelta

import httpx
import pytest
from django.utils import timezone

from escrow.deals import deal_cancel, deal_release, deal_transfer_retry
from escrow.models import EscrowDeal
from providers.base import Declined, Succeeded
from providers.breaker import shared_redis
from providers.models import MoneyMovement
from providers.protocol import movement_latest, movements_sweep
from providers.sandbox import stripe as stripe_sandbox
from providers.sandbox.server import Fault
from providers.stripe.client import StripeProviderClient
from tests.escrow.factories_deals import UserFactory, escrow_balances, held_deal, seller, staff, stripe_fee_kept

Status = EscrowDeal.Status


@pytest.fixture(autouse=True)
def _isolated(settings):
    prefix = settings.PROVIDER_STATE_KEY_PREFIX = f"test:escrow-sandbox:{uuid.uuid4().hex}"
    settings.PROVIDER_RETRY_ATTEMPTS = 1
    yield
    client = shared_redis()
    for key in client.scan_iter(f"{prefix}:*") if client else []:
        client.delete(key)


def sweep_when_due(deal: EscrowDeal, operation: str) -> MoneyMovement:
    """Move the clock to the movement's next look (its next_sync_at), and run the sweeper once."""
    movement = movement_latest(operation=operation, subject_id=deal.pk)
    MoneyMovement.objects.filter(pk=movement.pk).update(next_sync_at=timezone.now())
    assert movements_sweep() == 1
    return MoneyMovement.objects.get(pk=movement.pk)


def test_a_transfer_to_an_account_without_the_capability_is_refused_and_not_stored(sandbox):
    response = httpx.post(f"{sandbox.url}/stripe/_simulate/accounts/acct_seller1", json={"transfers": "inactive"})
    assert response.status_code == 200 and response.json()["capabilities"]["transfers"] == "inactive"
    with StripeProviderClient() as stripe:
        account = stripe.retrieve_account(account_id="acct_seller1")
        assert isinstance(account, Succeeded) and (account.reference, account.status) == ("acct_seller1", "inactive")
        refused = stripe.create_transfer(amount_minor=900, currency="USD", destination="acct_seller1",
                                         idempotency_key="escrow:1:transfer")  # fmt: skip
        assert isinstance(refused, Declined) and refused.code == "insufficient_capabilities_for_transfer"
        assert refused.raw["param"] == "destination"
        stripe_sandbox.account_set(sandbox, "acct_seller1", transfers="active")
        accepted = stripe.create_transfer(amount_minor=900, currency="USD", destination="acct_seller1",
                                          idempotency_key="escrow:1:transfer")  # fmt: skip
        assert isinstance(accepted, Succeeded)
        replayed = stripe.create_transfer(amount_minor=900, currency="USD", destination="acct_seller1",
                                          idempotency_key="escrow:1:transfer")  # fmt: skip
        assert replayed == accepted and len(stripe_sandbox.state_of(sandbox).transfers) == 1
        assert isinstance(stripe.retrieve_account(account_id="acct_nobody"), Declined)
    updates = [e for e in stripe_sandbox.state_of(sandbox).events if e["type"] == "account.updated"]
    assert [e["data"]["object"]["capabilities"]["transfers"] for e in updates] == ["inactive", "active"]


@pytest.mark.django_db
def test_an_unknown_capture_keeps_the_deal_releasing_until_the_sync_finishes_it(sandbox):
    buyer, account = UserFactory(), seller(sandbox, rate_bps=800)
    deal = held_deal(buyer, account, amount_minor=10_000)
    sandbox.add_fault(Fault(operation="stripe.payment_intents.capture", kind="error", status=502))

    deal = deal_release(deal_id=deal.pk, actor=buyer)
    capture = movement_latest(operation="escrow.capture", subject_id=deal.pk)
    assert deal.status == Status.RELEASING and (capture.status, capture.sync_attempts) == ("unknown", 1)
    assert escrow_balances()["clearing"] == escrow_balances()["fees"] == 0  # nothing recorded as captured
    assert movements_sweep() == 0  # not due yet: the next look is in 5 minutes
    assert timedelta(minutes=4) < capture.next_sync_at - timezone.now() <= timedelta(minutes=5)

    assert sweep_when_due(deal, "escrow.capture").status == "succeeded"
    deal.refresh_from_db()
    assert deal.status == Status.TRANSFERRED
    # the look-up found the PaymentIntent still requires_capture (never captured): the same request, same key
    assert sandbox.calls["stripe.payment_intents.capture"] == 2
    fee = 320  # Stripe's fee, posted once although the capture was sent twice: 2.9% of 10,000 = 290, plus 30
    assert escrow_balances() == {
        "authorized": 0, "held": 0, "payable": 0, "commission": 800, "clearing": 800 - fee, "fees": fee,
    }  # fmt: skip
    assert stripe_fee_kept(sandbox, deal.payment_intent_id) == fee


@pytest.mark.django_db
def test_an_unknown_void_keeps_the_deal_refunding_until_the_sync_finishes_it(sandbox):
    account = seller(sandbox)
    deal = held_deal(UserFactory(), account, amount_minor=5_000)
    sandbox.add_fault(Fault(operation="stripe.payment_intents.cancel", kind="error", status=500))
    deal = deal_cancel(deal_id=deal.pk, actor=account.user)
    assert deal.status == Status.REFUNDING and "unknown" in deal.failure_reason
    assert sweep_when_due(deal, "escrow.void").status == "succeeded"
    deal.refresh_from_db()
    assert deal.status == Status.REFUNDED and escrow_balances()["held"] == 0
    assert sandbox.calls["stripe.payment_intents.cancel"] == 2


@pytest.mark.django_db
def test_a_late_retry_after_an_unknown_transfer_finds_the_transfer_instead_of_paying_twice(sandbox):
    account = seller(sandbox, rate_bps=800)
    buyer = UserFactory()
    deal = held_deal(buyer, account, amount_minor=10_000)
    sandbox.add_fault(Fault(operation="stripe.transfers.create", kind="applied_then_timeout"))
    deal = deal_release(deal_id=deal.pk, actor=buyer)
    assert deal.status == Status.RELEASED and deal.transfer_attempts == 1  # Stripe moved it; we never heard
    (made,) = stripe_sandbox.state_of(sandbox).transfers.values()
    stripe_sandbox.state_of(sandbox).idempotency.clear()  # a day later: Stripe has forgotten our key

    deal = deal_transfer_retry(deal_id=deal.pk, actor=staff())  # looks the transfer up: sends nothing

    assert (deal.status, deal.transfer_id) == (Status.TRANSFERRED, made["id"])
    assert deal.transfer_attempts == 1 and sandbox.calls["stripe.transfers.list"] == 1
    assert len(stripe_sandbox.state_of(sandbox).transfers) == 1 and sandbox.calls["stripe.transfers.create"] == 1
    assert escrow_balances()["payable"] == 0  # the seller is paid once, in the ledger too


@pytest.mark.django_db
def test_a_late_retry_that_cannot_see_stripes_transfers_sends_nothing(sandbox):
    account = seller(sandbox)
    buyer = UserFactory()
    deal = held_deal(buyer, account, amount_minor=10_000)
    sandbox.add_fault(Fault(operation="stripe.transfers.create", kind="applied_then_timeout"))
    deal_release(deal_id=deal.pk, actor=buyer)
    transfer = movement_latest(operation="escrow.transfer", subject_id=deal.pk)
    a_day_later = timezone.now() - timedelta(days=1)  # past Stripe's key window: a re-send could pay twice
    MoneyMovement.objects.filter(pk=transfer.pk).update(first_sent_at=a_day_later)
    sandbox.add_fault(Fault(operation="stripe.transfers.list", kind="error", status=503))

    deal = deal_transfer_retry(deal_id=deal.pk, actor=staff())

    assert deal.status == Status.RELEASED and deal.transfer_attempts == 1  # no new attempt after an unknown
    assert sandbox.calls["stripe.transfers.create"] == 1 and sandbox.calls["stripe.transfers.list"] == 1
    assert MoneyMovement.objects.get(pk=transfer.pk).status == "unknown"  # still followed by the sweeper
