"""Escrow deals and purchases reconcile cleanly: their postings, Stripe's report and their rows agree."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest
from django.utils import timezone

from core.money import Money
from escrow.deals import deal_cancel, deal_release, deal_transfer_reversed
from escrow.models import Purchase
from escrow.purchases import purchase_create, purchase_refund, purchase_report_delivery
from ledger.integrity import ledger_integrity_report
from monitoring.models import ReconciliationIssue, ReconciliationRun
from monitoring.reconciliation import reconciliation_run
from providers.sandbox import stripe as stripe_sandbox
from providers.stripe.client import StripeProviderClient
from tests.escrow.factories_deals import UserFactory, held_deal, seller, staff
from tests.escrow.factories_purchases import deliverer_create, finance_create, service_create
from tests.providers.conftest import default_payment_config  # noqa: F401 - the seeded fee rules

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("default_payment_config")]


@pytest.fixture(autouse=True)
def _isolated(settings):
    settings.PROVIDER_STATE_KEY_PREFIX = f"test:reconciliation-escrow:{uuid.uuid4().hex}"
    settings.PROVIDER_RETRY_ATTEMPTS = 1


def test_a_day_of_escrow_and_purchases_has_no_issues(sandbox):
    buyer = UserFactory()
    account = seller(sandbox, rate_bps=800)
    released = deal_release(deal_id=held_deal(buyer, account, amount_minor=12_345).pk, actor=buyer)
    with StripeProviderClient() as client:  # Stripe takes part of the transfer back (e.g. a dispute)
        reversal = client.reverse_transfer(
            transfer_id=released.transfer_id, idempotency_key="reverse-part", amount_minor=1_000
        ).reference
    deal_transfer_reversed(deal_id=released.pk, reversals=[(reversal, 1_000)], amount_reversed=1_000)
    captured_then_refunded = held_deal(buyer, account, amount_minor=5_000, deadline_in=timedelta(days=20))
    refunded = deal_cancel(deal_id=captured_then_refunded.pk, actor=account.user)
    service_create()
    purchase = purchase_create(
        buyer=buyer, service_code="phone-verification", currency="USD", payment_method="pm_card_visa", client_key="p1"
    )
    purchase = purchase_report_delivery(purchase_id=purchase.pk, actor=deliverer_create(), outcome="delivered")
    assert purchase.status == Purchase.Status.CAPTURED
    partial = purchase_refund(
        purchase_id=purchase.pk, amount=Money(2_500, "USD"), actor=finance_create(), client_key="partial"
    )
    noon = int(datetime.combine(timezone.now().date(), datetime.min.time(), tzinfo=UTC).timestamp()) + 12 * 3600
    for txn_id in list(stripe_sandbox.state_of(sandbox).balance_transactions):
        stripe_sandbox.balance_transaction_set_created(sandbox, txn_id, noon)

    run = reconciliation_run(
        day=timezone.now().date(), provider="stripe", trigger="command", actor=staff("run_reconciliation")
    )

    assert run.status == ReconciliationRun.Status.SUCCEEDED
    issues = list(ReconciliationIssue.objects.values_list("provider_reference", "kind", "detail"))
    assert issues == []
    references = {
        released.payment_intent_id,
        released.transfer_id,
        reversal,
        refunded.payment_intent_id,
        refunded.refund_id,
        purchase.payment_intent_id,
        partial.provider_reference,
    }
    assert all(references) and len(references) == 7
    assert run.matched_count == 7 and run.provider_rows == 7
    assert ledger_integrity_report().is_clean
