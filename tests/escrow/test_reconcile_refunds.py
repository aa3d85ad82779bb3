"""`manage.py reconcile_refunds`: purchases a crash or an unknown answer left owing money are found and fixed once."""

from __future__ import annotations

import io
import uuid
from datetime import timedelta

import pytest
from django.core.management import CommandError, call_command
from django.utils import timezone

from escrow.models import Purchase, SpendReservation
from escrow.purchases import purchase_cancel, purchase_create, purchase_report_delivery
from ledger.integrity import ledger_integrity_report
from ledger.models import Account
from ledger.selectors import account_balance
from providers.sandbox import stripe as stripe_sandbox
from providers.sandbox.server import Fault
from tests.escrow.factories_purchases import buyer_create, deliverer_create, service_create

MONEY_CALLS = ("stripe.payment_intents.cancel", "stripe.payment_intents.capture", "stripe.refunds.create")


@pytest.fixture(autouse=True)
def _isolated(settings, db):
    settings.PROVIDER_STATE_KEY_PREFIX = f"test:reconcile-refunds:{uuid.uuid4().hex}"
    settings.PROVIDER_RETRY_ATTEMPTS = 1
    service_create()


def buy(buyer, key: str) -> Purchase:
    return purchase_create(
        buyer=buyer, service_code="phone-verification", currency="USD", payment_method="pm_card_visa", client_key=key
    )


def run(*args: str) -> str:
    out = io.StringIO()
    call_command("reconcile_refunds", *args, stdout=out)
    return out.getvalue()


def money_calls(sandbox) -> dict[str, int]:
    return {name: sandbox.calls[name] for name in MONEY_CALLS}


@pytest.fixture
def left_behind(sandbox):
    """Three purchases owing money back, each the way a crash or a timeout leaves it, and three that owe nothing."""
    alice, bob, deliverer = buyer_create(), buyer_create(), deliverer_create()
    never_voided = buy(alice, "crash")  # failed was recorded, then the process died before the void call
    Purchase.objects.filter(pk=never_voided.pk).update(
        status=Purchase.Status.VOIDING, outcome="failed", outcome_at=timezone.now()
    )
    unknown_void = buy(alice, "unknown")  # Stripe applied the void, we never heard back
    sandbox.add_fault(Fault(operation="stripe.payment_intents.cancel", kind="applied_then_timeout"))
    assert purchase_cancel(purchase_id=unknown_void.pk, actor=alice).status == "void_unknown"
    captured_then_failed = buy(bob, "captured")  # captured, then failed; the refund never sent
    purchase_report_delivery(purchase_id=captured_then_failed.pk, actor=deliverer, outcome="delivered")
    Purchase.objects.filter(pk=captured_then_failed.pk).update(outcome="failed", outcome_at=timezone.now())

    voided = buy(bob, "fine-voided")
    purchase_cancel(purchase_id=voided.pk, actor=bob)
    buy(bob, "fine-delivered")
    delivered = Purchase.objects.get(client_key="fine-delivered")
    purchase_report_delivery(purchase_id=delivered.pk, actor=deliverer, outcome="delivered")
    old = buy(bob, "too-old")  # outside the window
    Purchase.objects.filter(pk=old.pk).update(
        status=Purchase.Status.VOIDING, outcome="failed", created_at=timezone.now() - timedelta(days=40)
    )
    return {"never_voided": never_voided, "unknown_void": unknown_void, "captured_then_failed": captured_then_failed}


def statuses(purchases: dict[str, Purchase]) -> dict[str, str]:
    return {name: Purchase.objects.get(pk=p.pk).status for name, p in purchases.items()}


@pytest.mark.django_db
def test_dry_run_reports_every_left_behind_purchase_and_changes_nothing(sandbox, left_behind):
    calls_before, statuses_before = money_calls(sandbox), statuses(left_behind)
    out = run("--days", "30", "--dry-run")
    assert "Dry run" in out and "3 purchase(s)" in out
    for purchase in left_behind.values():
        assert f"purchase {purchase.pk} " in out
    assert "void outcome unknown" in out and "void interrupted" in out and "only $0.00 refunded" in out
    assert "Owed by currency: 300.00 USD" in out
    assert f"{left_behind['captured_then_failed'].buyer.username}: 100.00 USD" in out
    assert f"{left_behind['never_voided'].buyer.username}: 200.00 USD" in out
    assert money_calls(sandbox) == calls_before and statuses(left_behind) == statuses_before


@pytest.mark.django_db
def test_execute_fixes_each_once_and_a_second_run_finds_nothing(sandbox, left_behind):
    calls_before = money_calls(sandbox)
    out = run("--days", "30", "--execute")
    assert "Fixed: 3 purchase(s)" in out and "Settled now: 3" in out
    assert statuses(left_behind) == {
        "never_voided": "voided",
        "unknown_void": "voided",
        "captured_then_failed": "refunded",
    }
    calls = money_calls(sandbox)
    assert calls["stripe.payment_intents.cancel"] == calls_before["stripe.payment_intents.cancel"] + 1  # crash only
    assert calls["stripe.refunds.create"] == calls_before["stripe.refunds.create"] + 1
    assert calls["stripe.payment_intents.capture"] == calls_before["stripe.payment_intents.capture"]
    intents = stripe_sandbox.state_of(sandbox).payment_intents
    for name in ("never_voided", "unknown_void"):
        assert intents[Purchase.objects.get(pk=left_behind[name].pk).payment_intent_id]["status"] == "canceled"
        assert SpendReservation.objects.get(reference=f"purchase:{left_behind[name].pk}").released_at is not None
    refunded = Purchase.objects.get(pk=left_behind["captured_then_failed"].pk)
    assert refunded.refunded_minor == refunded.captured_minor == 10_000
    clearing = account_balance(Account.objects.get(code="provider:stripe:clearing:USD")).posted.minor
    fees = account_balance(Account.objects.get(code="platform:provider-fees:stripe:USD")).posted.minor
    fee = 320  # Stripe's USD card fee on each 10,000 capture: 2.9% = 290, plus 30; not returned on a refund
    assert fees == 2 * fee  # two captures: the purchase delivered for good, and the one refunded now
    assert clearing == 10_000 - 2 * fee  # only the purchase delivered for good keeps its money, less both fees
    assert ledger_integrity_report().findings == []

    again = run("--days", "30", "--execute")
    assert "Fixed: 0 purchase(s)" in again and "Owed by currency: none" in again
    assert money_calls(sandbox) == calls
    assert "would fix: 0 purchase(s)" in run("--days", "30", "--dry-run")


@pytest.mark.django_db
def test_a_window_below_one_day_is_refused():
    with pytest.raises(CommandError, match="at least one day"):
        run("--days", "0", "--dry-run")
