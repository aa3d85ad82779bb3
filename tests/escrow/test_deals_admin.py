"""The escrow admin: deal actions call the services as the signed-in user and report the outcome or the
error's user_message and action_required; money fields stay read-only; tier changes are audited."""

from __future__ import annotations

import uuid

import pytest
from django.contrib.auth.models import User
from django.contrib.messages import constants as message_levels
from django.urls import reverse

from core.models import AuditLog
from escrow.models import CommissionTier, EscrowDeal
from providers.models import MoneyMovement
from providers.sandbox import stripe as stripe_sandbox
from tests.escrow.factories_deals import UserFactory, held_deal, seller, tier
from tests.staff import client_for, member

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _settings(settings):
    settings.PROVIDER_STATE_KEY_PREFIX = f"test:escrow-admin:{uuid.uuid4().hex}"
    settings.PROVIDER_RETRY_ATTEMPTS = 1


def run_action(user: User, action: str, *deals: EscrowDeal, confirm: bool = True):
    data = {"action": action, "_selected_action": [str(d.pk) for d in deals], "index": "0"}
    if confirm:
        data["post"] = "yes"  # the confirmation page's submit
    return client_for(user).post(reverse("admin:escrow_escrowdeal_changelist"), data, follow=True)


def test_money_actions_ask_for_confirmation_first_and_move_nothing_until_then(sandbox):
    operator = member("Finance operator")
    deal = held_deal(UserFactory(), seller(sandbox, rate_bps=800), amount_minor=12_345)
    page = run_action(operator, "release", deal, confirm=False)
    text = page.content.decode()
    assert page.status_code == 200 and "Release to the seller" in text
    assert "$123.45" in text and "seller gets $113.57" in text and 'name="post" value="yes"' in text
    assert EscrowDeal.objects.get(pk=deal.pk).status == "held"
    assert sandbox.calls["stripe.payment_intents.capture"] == 0


def messages_of(response) -> list[tuple[int, str]]:
    return [(message.level, str(message)) for message in response.context["messages"]]


def test_an_operator_releases_and_retries_a_transfer_from_the_admin(sandbox):
    operator = member("Finance operator")
    account = seller(sandbox, transfers="inactive")
    deal = held_deal(UserFactory(), account)

    (message,) = messages_of(run_action(operator, "release", deal))
    assert message[0] == message_levels.WARNING and "now transfer failed" in message[1]

    stripe_sandbox.account_set(sandbox, account.stripe_account_id, transfers="active")
    (message,) = messages_of(run_action(operator, "retry_transfer", deal))
    assert message == (message_levels.SUCCESS, f"Deal {deal.pk}: transfer retried; now transferred.")
    assert len(stripe_sandbox.state_of(sandbox).transfers) == 1
    assert AuditLog.objects.filter(action="escrow.deal.transfer_retry", actor=operator).exists()


def test_a_viewer_is_told_what_permission_is_missing_and_nothing_moves(sandbox):
    viewer = member("Finance viewer")
    deal = held_deal(UserFactory(), seller(sandbox))
    (message,) = messages_of(run_action(viewer, "refund", deal))
    assert message[0] == message_levels.ERROR
    assert "You do not have permission" in message[1] and "escrow.refund_escrowdeal" in message[1]
    assert EscrowDeal.objects.get(pk=deal.pk).status == "held" and sandbox.calls["stripe.payment_intents.cancel"] == 0


def test_the_deal_pages_show_money_read_only_and_filter_by_status(sandbox):
    viewer = member("Finance viewer")
    deal = held_deal(UserFactory(), seller(sandbox), amount_minor=123_456)
    changelist = client_for(viewer).get(reverse("admin:escrow_escrowdeal_changelist"), {"status__exact": "held"})
    assert changelist.status_code == 200 and "$1,234.56" in changelist.content.decode()
    page = client_for(viewer).get(reverse("admin:escrow_escrowdeal_change", args=[deal.pk]))
    assert page.status_code == 200 and 'name="amount_minor"' not in page.content.decode()
    hold = reverse(
        "admin:providers_moneymovement_change", args=[MoneyMovement.objects.get(key=f"escrow:{deal.pk}:hold").pk]
    )
    assert f'<a href="{hold}">escrow.hold</a> escrow:{deal.pk}:hold: Done' in page.content.decode()  # its movements
    client_for(viewer).post(reverse("admin:escrow_escrowdeal_change", args=[deal.pk]), {"amount_minor": 1})
    assert EscrowDeal.objects.get(pk=deal.pk).amount_minor == 123_456


def test_an_approver_edits_a_commission_tier_with_an_audit_row():
    approver = member("Finance approver")
    growth = tier("growth", 800)
    response = client_for(approver).post(
        reverse("admin:escrow_commissiontier_change", args=[growth.pk]),
        {"name": "growth", "rate_bps": 750, "description": "", "active": "on"},
    )
    assert response.status_code == 302
    assert CommissionTier.objects.get(pk=growth.pk).rate_bps == 750
    row = AuditLog.objects.get(action="escrow.commissiontier.change", actor=approver)
    assert (row.before, row.after) == ({"rate_bps": "800"}, {"rate_bps": "750"})
