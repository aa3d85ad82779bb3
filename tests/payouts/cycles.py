"""A payout cycle of four winners the PayPal sandbox treats four ways, and what tests read of it."""

import pytest
from django.contrib.auth.models import Permission

from core.money import Money
from ledger.models import Account
from ledger.selectors import account_balance
from payouts.models import PayoutBatch, PayoutCycle, WinnerSelection
from payouts.services import winnings_fund

PERMISSIONS = ("prepare_payoutbatch", "approve_payoutbatch", "execute_payoutbatch")


def staff(django_user_model, name: str):
    user = django_user_model.objects.create_user(name, is_staff=True)
    user.user_permissions.set(Permission.objects.filter(codename__in=PERMISSIONS))
    return django_user_model.objects.get(pk=user.pk)


@pytest.fixture
def operator(django_user_model):
    return staff(django_user_model, "operator")


@pytest.fixture
def cycle(django_user_model):
    """Receivers paid, unclaimed, fail and return: the sandbox's rules make each item end that way."""
    cycle = PayoutCycle.objects.create(name="November")
    for n, receiver in enumerate(
        ["paid@example.com", "unclaimed@example.com", "fail@example.com", "return@example.com"]
    ):
        user = django_user_model.objects.create_user(f"winner-{n}")
        WinnerSelection.objects.create(
            cycle=cycle, user=user, amount_minor=10_000 * (n + 1), currency="USD", recipient_type="EMAIL",
            recipient=receiver,
        )  # fmt: skip
    winnings_fund(amount=Money(1_000_000, "USD"), reference="pool-1")
    return cycle


def available(code: str) -> int:
    return account_balance(Account.objects.get(code=code)).available.minor


def posted(code: str) -> int:
    return account_balance(Account.objects.get(code=code)).posted.minor


def statuses(batch: PayoutBatch) -> dict[str, str]:
    return {item.receiver.split("@")[0]: item.status for item in batch.items.all()}
