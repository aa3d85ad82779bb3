"""What the stack's smoke run needs before it talks to the API: the people (each with an API token), a seller's
connected account, a service on sale, and a funded payout cycle with its winners.

Everything goes through the apps' services; people in finance roles are made as the demo makes them
(`monitoring.demo.payouts.staff_member`). Import only after `django.setup()` (ops.stack_smoke does).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.utils import timezone

from core.money import Money
from core.roles import roles_sync
from core.tokens import api_token_issue
from escrow.models import CommissionTier, PurchasableService, SellerAccount, ServicePrice
from monitoring.demo.payouts import APPROVER, OPERATOR, WinnerRow, staff_member
from payouts.models import PayoutCycle, RecipientType
from payouts.services import winner_selections_import, winnings_fund

CURRENCY = "USD"
SELLER_ACCOUNT = "acct_stackSmokeSeller"
SERVICE = "phone-verification"
SERVICE_PRICE_MINOR = 150
# winner, PayPal address, prize in cents: together above PAYOUT_APPROVAL_THRESHOLD_MINOR (maker-checker applies)
WINNERS = [("smoke-ana", "ana@example.com", 600_000), ("smoke-ben", "ben@example.com", 400_000),
           ("smoke-chloe", "chloe@example.com", 200_000)]  # fmt: skip


@dataclass(frozen=True)
class Seeded:
    tokens: dict[str, str]  # buyer, seller, delivery, operator, approver -> API key
    cycle_id: int
    seller_account: str
    service: str
    winners_total_minor: int


def _user(username: str, group: str | None = None) -> object:
    user, _ = get_user_model().objects.get_or_create(username=username, defaults={"email": f"{username}@example.com"})
    if group:
        user.groups.add(Group.objects.get(name=group))
    return user


def _catalogue() -> None:
    service, _ = PurchasableService.objects.get_or_create(
        code=SERVICE, defaults={"name": "Phone verification", "delivery_timeout": timedelta(minutes=15)}
    )
    ServicePrice.objects.get_or_create(
        service=service, currency=CURRENCY, defaults={"amount_minor": SERVICE_PRICE_MINOR}
    )


def _cycle(operator: object, run_id: str) -> int:
    cycle = PayoutCycle.objects.create(name=f"Stack smoke {run_id}", created_by=operator)
    winners = [_user(name) for name, _, _ in WINNERS]
    rows = [
        WinnerRow(user.pk, Money(amount, CURRENCY), RecipientType.EMAIL, address)
        for user, (_, address, amount) in zip(winners, WINNERS, strict=True)
    ]
    winner_selections_import(cycle_id=cycle.pk, rows=rows, actor=operator)
    winnings_fund(amount=Money(sum(amount for *_, amount in WINNERS), CURRENCY), reference=f"stack-smoke:{run_id}")
    return cycle.pk


def seed(*, run_id: str) -> Seeded:
    roles_sync()
    people = {
        "buyer": _user("smoke-buyer"),
        "seller": _user("smoke-seller"),
        "delivery": _user("smoke-delivery", "Service delivery"),
        "operator": staff_member(OPERATOR, "Finance operator"),
        "approver": staff_member(APPROVER, "Finance approver"),
    }
    SellerAccount.objects.get_or_create(
        user=people["seller"],
        defaults={"stripe_account_id": SELLER_ACCOUNT, "commission_tier": CommissionTier.objects.get(name="growth")},
    )
    _catalogue()
    expires = timezone.now() + timedelta(days=1)
    tokens = {
        role: api_token_issue(user=user, name=f"stack smoke {run_id}", expires_at=expires, actor=None).key
        for role, user in people.items()
    }
    return Seeded(
        tokens=tokens,
        cycle_id=_cycle(people["operator"], run_id),
        seller_account=SELLER_ACCOUNT,
        service=SERVICE,
        winners_total_minor=sum(amount for *_, amount in WINNERS),
    )
