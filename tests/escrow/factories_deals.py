"""Escrow deal test data: sellers with sandbox connected accounts, buyers, staff, deals held through the service."""

from __future__ import annotations

import uuid
from datetime import timedelta

import factory
import httpx
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission
from django.utils import timezone

from core.money import Money
from escrow.deals import deal_create, ledger_accounts
from escrow.models import CommissionTier, EscrowDeal, SellerAccount
from ledger.models import Account
from ledger.selectors import account_balance
from ledger.services import credit, debit, transaction_post
from providers.fees import percent_of
from providers.sandbox import stripe as stripe_sandbox
from providers.sandbox.server import Sandbox

User = get_user_model()
DEAL_PERMISSIONS = ("release_escrowdeal", "approve_escrowdeal", "refund_escrowdeal", "retry_transfer_escrowdeal")


def tier(name: str = "standard", rate_bps: int = 500) -> CommissionTier:
    """The tiers are seeded by a migration; a transactional test's flush removes them, so make them again."""
    found, _ = CommissionTier.objects.get_or_create(name=name, defaults={"rate_bps": rate_bps})
    return found


class UserFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = User

    username = factory.LazyFunction(lambda: f"user-{uuid.uuid4().hex[:10]}")


def staff(*codenames: str) -> User:
    user = UserFactory(is_staff=True)
    user.user_permissions.set(Permission.objects.filter(codename__in=codenames or DEAL_PERMISSIONS))
    return User.objects.get(pk=user.pk)  # fresh permission cache


def seller(
    sandbox: Sandbox | None = None, *, rate_bps: int = 800, transfers: str = "active", tier_name: str = "growth"
) -> SellerAccount:
    """A seller whose connected account exists at the sandbox with the given `transfers` capability."""
    account_id = f"acct_{uuid.uuid4().hex[:16]}"
    if sandbox is not None:
        stripe_sandbox.account_set(sandbox, account_id, transfers=transfers)
    return SellerAccount.objects.create(
        user=UserFactory(),
        stripe_account_id=account_id,
        commission_tier=tier(tier_name, rate_bps),
        can_receive_transfers=transfers == "active",
    )


def held_deal(
    buyer: User,
    seller_account: SellerAccount,
    *,
    amount_minor: int = 10_000,
    currency: str = "USD",
    deadline_in: timedelta = timedelta(days=2),
    timeout_policy: str = EscrowDeal.TimeoutPolicy.REFUND,
    payment_method: str = "pm_card_visa",
    client_key: str | None = None,
) -> EscrowDeal:
    return deal_create(
        buyer=buyer,
        seller_account=seller_account.stripe_account_id,
        amount=Money(amount_minor, currency),
        deadline=timezone.now() + deadline_in,
        timeout_policy=timeout_policy,
        payment_method=payment_method,
        client_key=client_key or uuid.uuid4().hex,
    )


_SANDBOX_HEADERS = {"Authorization": "Bearer sk_test_sandbox", "Connection": "close"}


def held_deals_bulk(
    sandbox: Sandbox,
    buyer: User,
    seller_account: SellerAccount,
    *,
    count: int,
    amount_minor: int = 1_000,
    currency: str = "USD",
) -> list[EscrowDeal]:
    """Many held deals quickly: rows in bulk, a real manual-capture authorization at the sandbox for each
    (under the deal's own key and metadata), and one ledger posting for all their authorizations."""
    deadline = timezone.now() + timedelta(days=2)
    rate = seller_account.commission_tier.rate_bps
    deals = EscrowDeal.objects.bulk_create(
        EscrowDeal(
            buyer=buyer, seller_account=seller_account, amount_minor=amount_minor, currency=currency,
            commission_bps=rate, commission_minor=percent_of(amount_minor, rate), deadline=deadline,
            timeout_policy=EscrowDeal.TimeoutPolicy.REFUND, hold_mode=EscrowDeal.HoldMode.AUTHORIZATION,
            status=EscrowDeal.Status.HELD, client_key=uuid.uuid4().hex, payment_method="pm_card_visa",
            authorized_at=timezone.now(),
        )
        for _ in range(count)
    )  # fmt: skip
    # Plain form posts on fresh connections: the sandbox answers a kept-alive connection ~40 ms late (Nagle).
    sandbox_api = f"{sandbox.url}/stripe/v1"  # plain HTTP: no certificates to load
    with httpx.Client(base_url=sandbox_api, verify=False, headers=_SANDBOX_HEADERS) as http:  # noqa: S501
        for deal in deals:
            deal.transfer_group = f"escrow-{deal.pk}"
            form = {
                "amount": amount_minor, "currency": currency.lower(), "payment_method": "pm_card_visa",
                "capture_method": "manual", "confirm": "true", "metadata[escrow_deal]": deal.pk,
                "transfer_group": deal.transfer_group,
            }  # fmt: skip
            intent = http.post("/payment_intents", data=form, headers={"Idempotency-Key": f"escrow:{deal.pk}:hold"})
            assert intent.json()["status"] == "requires_capture", intent.text
            deal.payment_intent_id = intent.json()["id"]
    EscrowDeal.objects.bulk_update(deals, ["transfer_group", "payment_intent_id"])
    accounts = ledger_accounts(currency)
    total = Money(amount_minor * count, currency)
    transaction_post(
        idempotency_key=f"test:escrow-authorizations:{uuid.uuid4().hex}",
        kind="escrow_authorize",
        legs=[debit(accounts["authorized"], total), credit(accounts["held"], total)],
    )
    return deals


def overdue(*deals: EscrowDeal, by: timedelta = timedelta(hours=1)) -> None:
    """Move deadlines into the past (past the grace), as the clock would."""
    EscrowDeal.objects.filter(pk__in=[d.pk for d in deals]).update(deadline=timezone.now() - by)


def posted(code: str) -> int:
    account = Account.objects.filter(code=code).first()
    return 0 if account is None else account_balance(account).posted.minor


def escrow_balances(currency: str = "USD") -> dict[str, int]:
    return {
        "authorized": posted(f"escrow:authorized:{currency}"),
        "held": posted(f"escrow:buyer-funds-held:{currency}"),
        "payable": posted(f"escrow:seller-payable:{currency}"),
        "commission": posted(f"platform:revenue:escrow-commission:{currency}"),
        "clearing": posted(f"provider:stripe:clearing:{currency}"),
        "fees": posted(f"platform:provider-fees:stripe:{currency}"),
    }


def usd_card_fee(amount_minor: int) -> int:
    """Stripe's USD card fee by the seeded rule, written out: 2.9% rounded half up, plus 30 cents."""
    return (amount_minor * 290 + 5_000) // 10_000 + 30


def stripe_fee_kept(sandbox: Sandbox, payment_intent_id: str) -> int:
    """The fee Stripe kept on a PaymentIntent's charge, from its balance transactions (what reconciliation sees)."""
    state = stripe_sandbox.state_of(sandbox)
    charge = state.payment_intents[payment_intent_id]["latest_charge"]
    return sum(txn["fee"] for txn in state.balance_transactions.values() if txn["source"] == charge)
