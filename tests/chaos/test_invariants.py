"""The bank invariant of the chaos tests finds what it is there to find: money the provider moved that we never
recorded, a second card authorization for one deal, a movement nobody will look at again; and, at PayPal, Maya
and GCash, an object that moved money without its ledger posting or a posting without its object."""

from __future__ import annotations

import uuid

import httpx
import pytest
from django.conf import settings

from core.money import Money
from ledger.services import credit, debit, transaction_post
from providers.gcash.client import PayMongoClient
from providers.maya.client import MayaClient
from providers.models import MoneyMovement, Payment
from providers.payments import ledger_accounts, payment_initiate, refund_request
from providers.paypal.client import PayoutItemRequest, PayPalClient
from providers.routing import Choice
from providers.sandbox import paypal as paypal_sandbox
from tests.chaos import sandbox_objects
from tests.chaos.invariants import assert_bank_invariant, bank_report
from tests.chaos.sandbox_objects import gcash_objects, maya_objects, paypal_objects
from tests.escrow.factories_deals import UserFactory, held_deal, seller
from tests.protocol import harness, rows_payments, rows_payouts
from tests.protocol.harness import Case, commits

pytestmark = [pytest.mark.django_db, pytest.mark.chaos]


def _stripe(path: str, form: dict[str, object], key: str) -> dict:
    headers = {"Authorization": f"Bearer {settings.STRIPE_API_KEY}", "Idempotency-Key": key}
    answer = httpx.post(f"{settings.SANDBOX_URL}/stripe/v1{path}", data=form, headers=headers)
    assert answer.status_code == 200, answer.text
    return answer.json()


def test_a_clean_bank_passes_and_counts_what_moved(sandbox, default_payment_config):
    deal = held_deal(UserFactory(), seller(sandbox))
    report = assert_bank_invariant(settled=True)
    assert report.moved == 1 and (report.lost, report.doubled) == (0, 0)
    assert MoneyMovement.objects.get().subject_id == deal.pk


def test_money_moved_at_the_provider_without_our_record_is_lost(sandbox, default_payment_config):
    held_deal(UserFactory(), seller(sandbox))
    form = {"amount": 700, "currency": "usd", "payment_method": "pm_card_visa", "confirm": "true"}
    charge = _stripe("/payment_intents", form, uuid.uuid4().hex)
    report = bank_report(settled=True)
    assert report.lost >= 1 and any(charge["id"] in problem for problem in report.problems), report.problems


def test_a_second_authorization_for_one_deal_is_doubled(sandbox, default_payment_config):
    deal = held_deal(UserFactory(), seller(sandbox))
    form = {"amount": deal.amount_minor, "currency": "usd", "payment_method": "pm_card_visa", "confirm": "true",
            "capture_method": "manual", "metadata[escrow_deal]": deal.pk}  # fmt: skip
    _stripe("/payment_intents", form, f"escrow:{deal.pk}:hold:new-key")
    report = bank_report(settled=True)
    assert report.doubled == 1, report.problems


def test_an_open_movement_without_a_next_look_is_lost(sandbox, default_payment_config):
    deal = held_deal(UserFactory(), seller(sandbox))
    MoneyMovement.objects.filter(subject_id=deal.pk).update(status=MoneyMovement.Status.UNKNOWN, next_sync_at=None)
    report = bank_report(settled=False)
    assert report.lost == 1 and "without a next look" in report.problems[0], report.problems


# --- PayPal, Maya and GCash one to one ----------------------------------------------------------------------


@pytest.fixture(params=["in-process", "over-http"])
def sandbox_reach(request, monkeypatch) -> str:
    """The sandbox's state read in this process, or as the real-process tests read it: over HTTP only."""
    if request.param == "over-http":
        monkeypatch.setattr(sandbox_objects, "_local", lambda module: None)
    return request.param


def _customer(sandbox, path: str) -> None:
    """What the customer (or the calendar) does at the provider: a sandbox control route."""
    answer = httpx.post(f"{sandbox.url}{path}", json={})
    assert answer.status_code == 200, answer.text


def _maya_paid_and_refunded(case: Case) -> None:
    case.webhooks_to_us("maya")
    finance = rows_payments._user("finance", "add_refund")
    with commits():
        payment = payment_initiate(user=UserFactory(), amount=Money(40_000, "PHP"), client_key=uuid.uuid4().hex,
                                   explicit=Choice("maya", "maya_wallet"))  # fmt: skip
    _customer(case.sandbox, f"/maya/_simulate/payments/{payment.provider_reference}/succeed")
    harness.deliver_webhooks(case.sandbox)
    _customer(case.sandbox, f"/maya/_simulate/payments/{payment.provider_reference}/settle")
    with commits():
        refund_request(reference=payment.reference, amount=Money(10_000, "PHP"), client_key=uuid.uuid4().hex,
                       actor=finance)  # fmt: skip


def _gcash_charged(case: Case) -> None:
    case.webhooks_to_us("paymongo")
    with commits():
        rows_payments.prepare_charge(case)
        rows_payments.trigger_charge(case)


def _paypal_paid(case: Case) -> None:
    case.webhooks_to_us("paypal")
    with commits():
        rows_payouts.prepare_paypal(case)
        rows_payouts.trigger_execute(case)


def test_paypal_maya_and_gcash_moved_through_us_match_one_to_one(sandbox_reach, fast_sandbox, default_payment_config):
    case = Case(sandbox=fast_sandbox)
    _maya_paid_and_refunded(case)
    _gcash_charged(case)
    _paypal_paid(case)
    harness.sweep_until_quiet(fast_sandbox, at_least=harness.PROVIDER_ROUNDS)
    harness.deliver_webhooks(fast_sandbox)
    assert_bank_invariant(settled=True)
    kinds = sorted(moved.kind for moved in [*paypal_objects(), *maya_objects(), *gcash_objects()])
    assert kinds == ["gcash payment", "maya payment", "maya refund", "paypal batch", "paypal item SUCCESS"], kinds
    assert Payment.objects.filter(status=Payment.Status.SUCCEEDED).count() == 2


def _lost_without_posting(reference: str) -> None:
    report = bank_report(settled=True)
    unposted = [problem for problem in report.problems if reference in problem and "no ledger transaction" in problem]
    assert unposted and report.lost >= 1, report.problems


def test_a_paypal_item_paid_at_the_sandbox_without_a_posting_is_lost(sandbox, default_payment_config):
    item = PayoutItemRequest(receiver="paid@example.com", amount_minor=1_500, currency="USD", sender_item_id="w-1")
    with PayPalClient() as client:
        client.create_batch(sender_batch_id=uuid.uuid4().hex, items=[item])
    sandbox.tick()
    sandbox.tick()
    (paid,) = paypal_sandbox.paypal_sandbox(sandbox).items.values()
    assert paid.status == "SUCCESS"
    _lost_without_posting(paid.payout_item_id)


def _maya_captured(sandbox) -> str:
    checkout = MayaClient().checkout_create(amount_minor=40_000, currency="PHP", request_reference_number="not-ours",
                                            success_url="https://x.test/s", failure_url="https://x.test/f",
                                            cancel_url="https://x.test/c")  # fmt: skip
    _customer(sandbox, f"/maya/_simulate/payments/{checkout.reference}/succeed")
    return checkout.reference


def _gcash_captured(sandbox) -> str:
    client = PayMongoClient()
    source = client.source_create(amount_minor=50_000, currency="PHP", success_url="https://x.test/s",
                                  failed_url="https://x.test/f", idempotency_key=uuid.uuid4().hex)  # fmt: skip
    _customer(sandbox, f"/paymongo/_simulate/sources/{source.reference}/authorize")
    paid = client.payment_create(source_id=source.reference, amount_minor=50_000, currency="PHP",
                                 idempotency_key=uuid.uuid4().hex)  # fmt: skip
    return paid.reference


@pytest.mark.parametrize("capture", [_maya_captured, _gcash_captured], ids=["maya", "gcash"])
def test_a_payment_captured_at_the_sandbox_without_a_posting_is_lost(capture, sandbox, default_payment_config):
    _lost_without_posting(capture(sandbox))


@pytest.mark.parametrize("provider", ["paypal", "maya", "gcash"])
def test_a_ledger_posting_with_no_object_at_the_provider_is_found(
    provider, sandbox_reach, sandbox, default_payment_config
):
    accounts = ledger_accounts(provider, "PHP")
    amount = Money(2_500, "PHP")
    posted = transaction_post(
        idempotency_key=f"chaos-test:{uuid.uuid4().hex}", kind="customer_payment",
        legs=[debit(accounts["clearing"], amount), credit(accounts["customer_payments"], amount)],
        metadata={"provider": provider, "provider_reference": "nothing-there"},
    )  # fmt: skip
    report = bank_report(settled=True)
    assert any(f"[{posted.pk}]" in problem and "moved no money" in problem for problem in report.problems), (
        report.problems
    )


def test_a_payment_of_ours_paid_at_maya_but_never_told_is_lost_once_settled(
    sandbox_reach, sandbox, default_payment_config
):
    """The webhook never came and nobody looked: the sandbox is ahead of the ledger (read over HTTP too)."""
    with commits():
        payment = payment_initiate(user=UserFactory(), amount=Money(40_000, "PHP"), client_key=uuid.uuid4().hex,
                                   explicit=Choice("maya", "maya_wallet"))  # fmt: skip
    _customer(sandbox, f"/maya/_simulate/payments/{payment.provider_reference}/succeed")
    assert not bank_report(settled=False).problems  # in flight: the movement is still open
    _lost_without_posting(payment.provider_reference)
