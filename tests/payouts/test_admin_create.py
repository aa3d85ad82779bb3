"""Creating payout cycles and funding their prize pool in the admin: who may, what a bad amount says, and that a
funding posts once (whatever the number of submits) with one audit row."""

from __future__ import annotations

import html
import threading
import uuid

import pytest
from django.contrib.auth.models import User
from django.contrib.messages import constants as message_levels
from django.contrib.messages import get_messages
from django.db import connection
from django.test import Client
from django.urls import reverse

from core.errors import InvalidRequest
from core.models import AuditLog
from core.money import Money, amount_max_minor
from ledger.models import Transaction
from payouts.models import PayoutBatch, PayoutCycle, WinnerSelection
from payouts.selectors import pool_available
from payouts.services import cycle_prepare, prize_pool_fund
from tests.staff import client_for, member

CHANGELIST = reverse("admin:payouts_payoutcycle_changelist")
NO_PERMISSION = (
    "You do not have permission to do this. Ask an administrator for the permission '{}' or a finance role with it."
)


def cycle_with_winners(name: str = "March") -> PayoutCycle:
    cycle = PayoutCycle.objects.create(name=name)
    for n, amount_minor in enumerate((60_000, 40_000)):
        WinnerSelection.objects.create(
            cycle=cycle, user=User.objects.create_user(f"winner-{uuid.uuid4().hex[:8]}"), amount_minor=amount_minor,
            currency="USD", recipient_type="EMAIL", recipient=f"winner{n}@example.com",
        )  # fmt: skip
    return cycle


def fund(client: Client, cycle: PayoutCycle, *, amount: str = "1000.00", currency: str = "USD", key: str = ""):
    data = {
        "action": "fund_prize_pool", "_selected_action": [str(cycle.pk)], "post": "yes", "amount": amount,
        "currency": currency, "funding_key": key or uuid.uuid4().hex,
    }  # fmt: skip
    return client.post(CHANGELIST, data)


def said(response) -> list[tuple[int, str]]:
    return [(message.level, str(message)) for message in get_messages(response.wsgi_request)]


def fundings() -> int:
    return Transaction.objects.filter(kind="winnings_fund").count()


# --- creating cycles ------------------------------------------------------------------------------------------


@pytest.mark.django_db
def test_a_finance_operator_creates_a_cycle_with_an_audit_row():
    operator = member("Finance operator")

    response = client_for(operator).post(reverse("admin:payouts_payoutcycle_add"), {"name": "April draw"})

    assert response.status_code == 302
    cycle = PayoutCycle.objects.get(name="April draw")
    assert cycle.created_by == operator
    audit = AuditLog.objects.get(action="payouts.payoutcycle.add")
    assert (audit.actor, audit.object_id, audit.after) == (operator, str(cycle.pk), {"name": "April draw"})
    page = client_for(operator).get(reverse("admin:payouts_payoutcycle_change", args=[cycle.pk])).content.decode()
    assert "Import winners from a CSV file" in page  # winners are added to the cycle from its page


@pytest.mark.django_db
def test_a_finance_viewer_may_not_create_a_cycle():
    viewer = member("Finance viewer")

    assert client_for(viewer).get(reverse("admin:payouts_payoutcycle_add")).status_code == 403
    assert client_for(viewer).post(reverse("admin:payouts_payoutcycle_add"), {"name": "x"}).status_code == 403
    assert not PayoutCycle.objects.exists() and not AuditLog.objects.exists()


# --- funding the prize pool -----------------------------------------------------------------------------------


@pytest.mark.django_db
def test_the_fund_action_first_shows_the_cycle_and_a_filled_in_form_and_moves_nothing():
    cycle = cycle_with_winners()
    data = {"action": "fund_prize_pool", "_selected_action": [str(cycle.pk)], "index": "0"}

    response = client_for(member("Finance approver")).post(CHANGELIST, data)

    assert response.status_code == 200
    page = response.content.decode()
    assert "2 winner(s), $1,000.00 in USD; prize pool available now $0.00" in page
    assert "Funded for this cycle before: nothing" in page
    form = response.context["form"]
    assert (form.initial["amount"], form.initial["currency"]) == ("1000.00", "USD")
    assert len(form.initial["funding_key"]) == 32
    assert fundings() == 0 and not AuditLog.objects.exists()


@pytest.mark.django_db
def test_an_approver_funds_the_pool_once_however_often_the_page_is_submitted():
    approver, cycle, key = member("Finance approver"), cycle_with_winners(), uuid.uuid4().hex
    client = client_for(approver)

    first = fund(client, cycle, amount="1000.00", key=key)
    again = fund(client, cycle, amount="1000.00", key=key)  # the same page submitted twice

    posting = Transaction.objects.get(kind="winnings_fund")
    assert first.status_code == again.status_code == 302
    assert said(first) == [
        (message_levels.SUCCESS, f"{cycle}: prize pool funded with $1,000.00 (ledger transaction #{posting.pk}); "
                                 "$1,000.00 available for batches.")
    ]  # fmt: skip
    assert said(again)[1:] == [  # the first message is still waiting to be shown
        (message_levels.WARNING, f"{cycle}: this funding of $1,000.00 was posted already (ledger transaction "
                                 f"#{posting.pk}); nothing was posted again.")
    ]  # fmt: skip
    assert pool_available("USD") == Money(100_000, "USD")
    audit = AuditLog.objects.get(action="payouts.cycle.fund")
    assert (audit.actor, audit.object_id) == (approver, str(cycle.pk))
    assert audit.after == {"amount_minor": 100_000, "currency": "USD", "transaction_id": posting.pk, "funding_key": key}
    # funded, the cycle's winners can now be reserved by a batch
    (batch,) = cycle_prepare(cycle_id=cycle.pk, actor=member("Finance operator"))
    assert batch.total_minor == 100_000 and pool_available("USD") == Money(0, "USD")


@pytest.mark.django_db
def test_the_same_page_sent_again_with_another_amount_is_refused_and_posts_nothing_more():
    cycle, key = cycle_with_winners(), uuid.uuid4().hex
    client = client_for(member("Finance approver"))
    fund(client, cycle, amount="1000.00", key=key)

    changed = fund(client, cycle, amount="2000.00", key=key)

    assert said(changed)[1:] == [
        (message_levels.ERROR, f"{cycle}: This movement was already recorded with different amounts or accounts. "
                               "Check the existing transaction; do not reuse its reference for another movement.")
    ]  # fmt: skip
    assert fundings() == 1 and AuditLog.objects.filter(action="payouts.cycle.fund").count() == 1
    assert pool_available("USD") == Money(100_000, "USD")


@pytest.mark.django_db
def test_the_page_shows_what_was_funded_for_the_cycle_before():
    cycle = cycle_with_winners()
    client = client_for(member("Finance approver"))
    fund(client, cycle, amount="250.00")

    page = client.post(CHANGELIST, {"action": "fund_prize_pool", "_selected_action": [str(cycle.pk)]})

    assert "Funded for this cycle before: $250.00" in page.content.decode()


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("amount", "currency", "says"),
    [
        ("0", "USD", "the amount must be more than zero, got 0"),
        ("-5.00", "USD", "the amount must be more than zero, got -5.00"),
        ("12.345", "USD", "'12.345' has more than 2 decimal places for USD"),
        ("10.5", "JPY", "'10.5' has more than 0 decimal places for JPY"),
        ("1e3", "USD", "'1e3' is not a plain decimal amount like 1234.50"),
        ("1,000.00", "USD", "'1,000.00' is not a plain decimal amount like 1234.50"),
        ("100000000.00", "USD", "the amount is more than the maximum of $99,999,999.00"),
        ("10.00", "usd", "currency must be an upper-case ISO 4217 code, got 'usd'"),
        ("10.00", "XYZ", "unknown currency 'XYZ': use an ISO 4217 code such as USD"),
    ],
)  # fmt: skip
def test_a_bad_amount_is_refused_on_the_page_with_what_is_wrong_and_nothing_is_written(amount, currency, says):
    cycle = cycle_with_winners()

    response = fund(client_for(member("Finance approver")), cycle, amount=amount, currency=currency)

    assert response.status_code == 200  # the funding page again, with the error on its field
    assert says in html.unescape(response.content.decode())
    assert fundings() == 0 and not AuditLog.objects.exists()


@pytest.mark.django_db
def test_staff_without_the_fund_permission_are_told_which_one_and_nothing_moves():
    operator, cycle = member("Finance operator"), cycle_with_winners()

    response = fund(client_for(operator), cycle)

    assert said(response) == [(message_levels.ERROR, f"{cycle}: " + NO_PERMISSION.format("payouts.fund_payoutcycle"))]
    assert fundings() == 0 and not AuditLog.objects.exists()
    assert client_for(member()).post(CHANGELIST, {"action": "fund_prize_pool"}).status_code == 403  # no view


@pytest.mark.django_db
def test_one_cycle_at_a_time():
    first, second = cycle_with_winners("A"), cycle_with_winners("B")
    data = {"action": "fund_prize_pool", "_selected_action": [str(first.pk), str(second.pk)], "post": "yes"}

    response = client_for(member("Finance approver")).post(CHANGELIST, data)

    assert said(response) == [(message_levels.ERROR, "Select exactly one payout cycle to fund its prize pool.")]
    assert fundings() == 0


@pytest.mark.django_db
def test_the_service_holds_every_amount_to_the_bounds_of_its_currency():
    approver, cycle = member("Finance approver"), cycle_with_winners()

    with pytest.raises(InvalidRequest) as refused:
        prize_pool_fund(
            cycle_id=cycle.pk, amount=Money(amount_max_minor("PHP") + 1, "PHP"), funding_key="k" * 16, actor=approver
        )

    assert "more than the maximum of ₱99,999,999.00" in refused.value.user_message
    assert fundings() == 0 and not AuditLog.objects.exists()


@pytest.mark.django_db(transaction=True)
def test_two_concurrent_submits_of_one_funding_post_once_and_audit_once():
    approver, cycle, key = member("Finance approver"), cycle_with_winners(), uuid.uuid4().hex
    barrier, results, errors = threading.Barrier(2), [], []

    def submit() -> None:
        try:
            barrier.wait(timeout=10)
            funding = prize_pool_fund(cycle_id=cycle.pk, amount=Money(100_000, "USD"), funding_key=key, actor=approver)
            results.append(funding.posted)
        except Exception as error:  # reported below
            errors.append(error)
        finally:
            connection.close()

    threads = [threading.Thread(target=submit) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)

    assert errors == [] and sorted(results) == [False, True]
    assert fundings() == 1 and AuditLog.objects.filter(action="payouts.cycle.fund").count() == 1
    assert pool_available("USD") == Money(100_000, "USD")
    assert not PayoutBatch.objects.exists()
