"""The demo's payout cycle: winners imported and funded, a PayPal batch prepared by a finance operator and
approved by a finance approver (maker-checker), sent to the sandbox, and settled by its webhooks.

The sandbox plans each item's fate from its receiver (providers.sandbox.paypal.DEFAULT_RECEIVER_RULES): an
address with "unclaimed" stays UNCLAIMED (no PayPal account yet), one with "return" is paid and then RETURNED;
the others succeed. The unclaimed item is left as it is: the dashboard shows it, and staff may cancel it
(`item_cancel_unclaimed`) once it has waited PAYOUT_UNCLAIMED_CANCEL_AFTER_DAYS.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.base_user import AbstractBaseUser
from django.contrib.auth.models import Group
from django.core.management.base import CommandError
from django.utils import timezone

from core.money import Money
from ledger.models import Account
from ledger.selectors import account_balance
from monitoring.demo.webhooks import WebhookReceiver
from payouts.models import PayoutBatch, PayoutCycle, PayoutItem, RecipientType
from payouts.services import (
    batch_approve,
    batch_execute,
    cycle_prepare,
    winner_selections_import,
    winnings_fund,
    winnings_payable,
)
from providers.sandbox.server import Sandbox

OPERATOR, APPROVER = "finance-operator", "finance-approver"
CURRENCY = "USD"
# username, PayPal address (its words steer the sandbox), prize in cents, the item's expected final status
WINNERS = [
    ("ana", "ana@example.com", 400_000, PayoutItem.Status.SUCCESS),
    ("ben", "ben@example.com", 300_000, PayoutItem.Status.SUCCESS),
    ("chloe", "chloe@example.com", 200_000, PayoutItem.Status.SUCCESS),
    ("diego", "diego@example.com", 100_000, PayoutItem.Status.SUCCESS),
    ("emma", "emma.unclaimed@example.com", 75_000, PayoutItem.Status.UNCLAIMED),
    ("farid", "farid.return@example.com", 50_000, PayoutItem.Status.RETURNED),
]
SANDBOX_STEPS = 3  # batch PROCESSING; items SUCCESS / UNCLAIMED and the batch SUCCESS; the returned item back


class WinnerRow(NamedTuple):  # the shape winner_selections_import takes (as the admin's CSV import gives it)
    user_id: int
    amount: Money
    recipient_type: str
    recipient: str


@dataclass(frozen=True)
class PayoutDemo:
    batch: PayoutBatch
    items: dict[str, str]  # receiver -> status
    approval: str  # who approved, or why nobody had to


def staff_member(username: str, role: str) -> AbstractBaseUser:
    """A staff user in one finance role (core.roles), without a password: the demo acts as them."""
    user, created = get_user_model().objects.get_or_create(
        username=username, defaults={"email": f"{username}@example.com", "is_staff": True}
    )
    if created:
        user.set_unusable_password()
        user.save(update_fields=["password"])
    user.groups.add(Group.objects.get(name=role))
    return get_user_model().objects.get(pk=user.pk)  # no stale permission cache


def run_payout_cycle(
    *, run_id: str, sandbox: Sandbox, webhooks: WebhookReceiver, say: Callable[[str], None]
) -> PayoutDemo:
    operator, approver = staff_member(OPERATOR, "Finance operator"), staff_member(APPROVER, "Finance approver")
    name = f"Demo prize draw {timezone.now():%Y-%m-%d %H:%M:%S}"
    cycle = PayoutCycle.objects.create(name=name, created_by=operator)  # no service: the admin saves it so too
    winners = [get_user_model().objects.get_or_create(username=f"winner-{name}")[0] for name, *_ in WINNERS]
    rows = [
        WinnerRow(user.pk, Money(amount, CURRENCY), RecipientType.EMAIL, address)
        for user, (_, address, amount, _) in zip(winners, WINNERS, strict=True)
    ]
    winner_selections_import(cycle_id=cycle.pk, rows=rows, actor=operator)
    pool = Money(sum(amount for _, _, amount, _ in WINNERS), CURRENCY)
    winnings_fund(amount=pool, reference=f"demo:{run_id}")
    say(f"payout cycle #{cycle.pk}: {len(rows)} winners imported by {OPERATOR}, prize pool {pool} funded")
    payable = Account.objects.get(code=winnings_payable(CURRENCY))
    available_before = account_balance(payable).available

    (batch,) = cycle_prepare(cycle_id=cycle.pk, actor=operator)
    say(f"payout batch #{batch.pk} {batch.sender_batch_id}: {batch.status}, {batch.item_count} items, {pool} held")
    if batch.status == PayoutBatch.Status.PREPARED:
        batch = batch_approve(batch_id=batch.pk, approver=approver)
        approval = f"approved by {APPROVER} (prepared by {OPERATOR}: maker-checker)"
    else:
        approval = f"no approval needed: {pool} is within PAYOUT_APPROVAL_THRESHOLD_MINOR"
    say(f"payout batch #{batch.pk}: {approval}")
    batch = batch_execute(batch_id=batch.pk, actor=operator)
    say(f"payout batch #{batch.pk}: {batch.status} to PayPal as {batch.provider_batch_id}")
    for _ in range(SANDBOX_STEPS):
        sandbox.tick()  # PayPal works through the batch; every change comes back as a webhook
        webhooks.settle()
    batch.refresh_from_db()
    items = dict(batch.items.values_list("receiver", "status"))
    say(f"payout batch #{batch.pk}: {batch.status}; items " + ", ".join(f"{r} {s}" for r, s in items.items()))
    _check(batch, items, spent_or_held=available_before - account_balance(payable).available)
    return PayoutDemo(batch=batch, items=items, approval=approval)


def _check(batch: PayoutBatch, items: dict[str, str], *, spent_or_held: Money) -> None:
    """Every item reached its planned status, the batch completed, and the ledger followed the items."""
    planned = {address: status for _, address, _, status in WINNERS}
    if batch.status != PayoutBatch.Status.COMPLETED or items != planned:
        raise CommandError(f"the payout cycle did not settle as planned: batch {batch.status}, items {items}")
    needed_approval = batch.total_minor > settings.PAYOUT_APPROVAL_THRESHOLD_MINOR
    if needed_approval and batch.approved_by_id in (None, batch.prepared_by_id):
        raise CommandError(f"payout batch {batch.sender_batch_id} was sent without a second approver")
    # Paid items spent their reservation, the unclaimed one still holds it, the returned one gave it back.
    kept = (PayoutItem.Status.SUCCESS, PayoutItem.Status.UNCLAIMED)
    expected = Money(sum(amount for _, _, amount, status in WINNERS if status in kept), CURRENCY)
    if spent_or_held != expected:
        raise CommandError(f"the winnings payable available fell by {spent_or_held}, expected {expected}")
