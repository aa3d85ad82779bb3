"""Payouts for the matrix: payout.paypal_batch (a PayPal batch), payout.stripe_transfer (a winner with a
connected account, paid by a keyed Stripe transfer) and payout.cancel_unclaimed (an item left unclaimed,
cancelled at PayPal). Driven through payouts.services: cycle_prepare, batch_execute, item_cancel_unclaimed."""

from __future__ import annotations

import uuid
from datetime import timedelta

from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission
from django.utils import timezone

from core.money import Money
from payouts.models import PayoutBatch, PayoutCycle, PayoutItem, WinnerSelection
from providers.models import MoneyMovement
from providers.sandbox import paypal as paypal_sandbox
from providers.sandbox import stripe as stripe_sandbox
from tests.protocol import harness
from tests.protocol.harness import Case, Posting

USD = "USD"
PAYABLE = f"payouts:winnings-payable:{USD}"
PERMISSIONS = ("prepare_payoutbatch", "approve_payoutbatch", "execute_payoutbatch", "change_payoutitem")
PRIZE = 10_000


def _operator():
    user = get_user_model().objects.create_user(f"operator-{uuid.uuid4().hex[:8]}", is_staff=True)
    user.user_permissions.set(Permission.objects.filter(content_type__app_label="payouts", codename__in=PERMISSIONS))
    return get_user_model().objects.get(pk=user.pk)


def _cycle(case: Case, recipient_type: str, recipient: str) -> None:
    from payouts.services import winnings_fund

    cycle = PayoutCycle.objects.create(name=f"cycle-{uuid.uuid4().hex[:6]}")
    winner = get_user_model().objects.create_user(f"winner-{uuid.uuid4().hex[:8]}")
    WinnerSelection.objects.create(
        cycle=cycle, user=winner, amount_minor=PRIZE, currency=USD, recipient_type=recipient_type, recipient=recipient
    )
    winnings_fund(amount=Money(1_000_000, USD), reference=f"pool-{cycle.pk}")
    case.data["cycle"], case.data["operator"] = cycle, _operator()


def _prepared_batch(case: Case) -> None:
    from payouts.services import cycle_prepare

    (batch,) = cycle_prepare(cycle_id=case.data["cycle"].pk, actor=case.data["operator"])
    case.data["batch"] = batch


def trigger_execute(case: Case) -> None:
    from payouts.services import batch_execute

    case.call(lambda: batch_execute(batch_id=case.data["batch"].pk, actor=case.data["operator"]))


# --- payout.paypal_batch -----------------------------------------------------------------------------------


def prepare_paypal(case: Case) -> None:
    _cycle(case, "EMAIL", "paid@example.com")
    _prepared_batch(case)


def _paypal(case: Case) -> paypal_sandbox.PayPalSandbox:
    return paypal_sandbox.paypal_sandbox(case.sandbox)


def _paid_items(case: Case, sender_item_ids: set[str]) -> list[paypal_sandbox.PayoutItem]:
    return [i for i in _paypal(case).items.values() if i.sender_item_id in sender_item_ids and i.status == "SUCCESS"]


def _items_of_batch(movement: MoneyMovement) -> list[PayoutItem]:
    return list(PayoutItem.objects.filter(batch_id=movement.subject_id))


def moved_paypal(case: Case, movement: MoneyMovement) -> int:
    """Batches at PayPal carrying this batch's items (a second batch would pay the winners again)."""
    ours = {item.sender_item_id for item in _items_of_batch(movement)}
    items = [i for i in _paypal(case).items.values() if i.sender_item_id in ours]
    return len({i.payout_batch_id for i in items})


def posted_paypal(case: Case, movement: MoneyMovement) -> list[Posting]:
    """Each item PayPal paid is posted (winnings payable to PayPal clearing) under PayPal's item id; the one
    winner here is always paid, so an item not paid at the sandbox is a problem of its own."""
    ours = {item.sender_item_id for item in _items_of_batch(movement)}
    paid = _paid_items(case, ours)
    assert len(paid) == len(ours), f"PayPal paid {len(paid)} of the batch's {len(ours)} items"
    clearing = f"provider:paypal:clearing:{USD}"
    return [
        Posting(reference=item.payout_item_id, accounts={PAYABLE: item.amount.minor, clearing: -item.amount.minor})
        for item in paid
    ]


# --- payout.stripe_transfer ---------------------------------------------------------------------------------


def prepare_stripe(case: Case) -> None:
    account = f"acct_{uuid.uuid4().hex[:16]}"
    stripe_sandbox.account_set(case.sandbox, account, transfers="active")
    _cycle(case, "STRIPE_ACCOUNT", account)
    case.data["account"] = account
    _prepared_batch(case)


def _transfers_to(case: Case, movement: MoneyMovement) -> list[dict]:
    item = PayoutItem.objects.get(pk=movement.subject_id)
    state = stripe_sandbox.state_of(case.sandbox)
    return [t for t in state.transfers.values() if t["destination"] == item.receiver]


def moved_stripe(case: Case, movement: MoneyMovement) -> int:
    return len(_transfers_to(case, movement))


def posted_stripe(case: Case, movement: MoneyMovement) -> list[Posting]:
    (transfer,) = _transfers_to(case, movement)
    clearing = f"provider:stripe:clearing:{USD}"
    return [Posting(reference=transfer["id"], accounts={PAYABLE: transfer["amount"], clearing: -transfer["amount"]})]


# --- payout.cancel_unclaimed --------------------------------------------------------------------------------


def prepare_unclaimed(case: Case) -> None:
    """A batch paid out, its one item left unclaimed by the winner for longer than the configured days."""
    _cycle(case, "EMAIL", "unclaimed@example.com")
    _prepared_batch(case)
    trigger_execute(case)
    harness.sweep_until_quiet(case.sandbox, at_least=harness.PROVIDER_ROUNDS)
    item = PayoutItem.objects.get(batch=case.data["batch"])
    assert item.status == "UNCLAIMED", (item.status, case.errors, PayoutBatch.objects.get(pk=item.batch_id).status)
    PayoutItem.objects.filter(pk=item.pk).update(updated_at=timezone.now() - timedelta(days=40))
    case.data["item"] = item
    case.errors.clear()


def trigger_cancel_unclaimed(case: Case) -> None:
    from payouts.services import item_cancel_unclaimed

    case.call(lambda: item_cancel_unclaimed(item_id=case.data["item"].pk, actor=case.data["operator"]))


def moved_cancel(case: Case, movement: MoneyMovement) -> int:
    item = PayoutItem.objects.get(pk=movement.subject_id)
    found = _paypal(case).items.get(item.provider_item_id)
    return 1 if found is not None and found.canceled else 0


def posted_cancel(case: Case, movement: MoneyMovement) -> list[Posting]:
    """The money came back to the pool: nothing was paid out for the item."""
    item = PayoutItem.objects.get(pk=movement.subject_id)
    return [Posting(reference=item.provider_item_id, accounts={})]
