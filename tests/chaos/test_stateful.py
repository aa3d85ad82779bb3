"""A stateful Hypothesis test of the whole bank: payments, refunds, escrow holds, releases, cancels and timeouts,
purchases (delivered, failed, cancelled, timed out, refunded), Stripe payouts and webhooks, interleaved at
random, each call under a fault the sandbox injects on the call it makes, over real HTTP and PostgreSQL.

After every step the bank invariant (tests.chaos.invariants) holds with movements in flight; `settle` (and the
end of every run) runs the beat jobs until quiet and checks it with nothing in flight. Webhooks reach our
endpoint through the protocol harness's relay: they may be dropped, duplicated or reordered by the sandbox,
held back while the poller runs ahead of them, or forged.

Each run is one savepoint of the test's transaction, rolled back at its end with the sandbox reset.
"""

from __future__ import annotations

import json
import uuid
from collections import Counter
from datetime import timedelta

import pytest
from django.db import transaction
from django.test import Client
from django.utils import timezone
from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import Bundle, RuleBasedStateMachine, initialize, invariant, rule, run_state_machine_as_test

from core.errors import AppError
from core.money import Money
from escrow.models import EscrowDeal, Purchase
from ledger.models import Entry
from ledger.services import forget_account_facts
from providers.models import MoneyMovement, Payment, WebhookEvent
from providers.routing import Choice
from providers.sandbox import stripe as stripe_sandbox
from providers.sandbox.server import Fault, Sandbox
from tests.chaos import results, world
from tests.chaos.invariants import assert_bank_invariant
from tests.escrow.factories_deals import UserFactory, overdue, seller, staff
from tests.escrow.factories_purchases import buyer_create, deliverer_create, finance_create, service_create
from tests.protocol import harness, rows_payouts
from tests.protocol.harness import Case, commits

pytestmark = [pytest.mark.django_db, pytest.mark.chaos]

USD = "USD"
# what the sandbox does to the one Stripe call a step makes (the provider-side faults of issue 13)
FAULTS = ("none", "applied_then_timeout", "timeout", "reset", "http_500", "http_429", "decline", "latency")
WEBHOOK_WEATHER = ("clear", "drop", "duplicate", "delayed", "reordered", "poller_ahead", "forged")
SCENARIO = "stateful (hypothesis)"


def _succeeded() -> int:
    return MoneyMovement.objects.filter(status=MoneyMovement.Status.SUCCEEDED).count()


def _fault(kind: str, operation: str) -> Fault | None:
    if kind == "none":
        return None
    if kind == "latency":
        return Fault(operation=operation, kind="latency", latency_ms=50)
    if kind in ("applied_then_timeout", "timeout", "reset"):
        return Fault(operation=operation, kind=kind)
    if kind == "decline":
        body = {"error": {"type": "card_error", "code": "card_declined", "message": "Your card was declined."}}
        return Fault(operation=operation, kind="error", status=402, body=body)
    return Fault(operation=operation, kind="error", status=int(kind.removeprefix("http_")))


class Bank(RuleBasedStateMachine):
    sandbox: Sandbox  # set by the test before the machine runs

    payments = Bundle("payments")
    deals = Bundle("deals")
    purchases = Bundle("purchases")

    def __init__(self) -> None:
        super().__init__()
        self.savepoint = transaction.savepoint()
        self.case = Case(sandbox=self.sandbox)
        self.case.webhooks_to_us("stripe")
        self.faults: Counter[str] = Counter()  # tried
        self.moved: Counter[str] = Counter()  # money movements that succeeded during the calls under each

    @initialize()
    def people(self) -> None:
        self.buyer, self.finance = UserFactory(), finance_create()
        self.payer = staff("add_refund")
        self.seller = seller(self.sandbox, rate_bps=800)
        self.deliverer, self.purchaser = deliverer_create(), buyer_create()
        self.service = service_create(code=f"svc-{uuid.uuid4().hex[:8]}", prices={USD: 5_000}).code

    # --- helpers
    def _call(self, fault: str, operation: str, service) -> object:
        """Call a public service with the fault armed on the Stripe call it makes; a domain error is an answer."""
        armed = _fault(fault, f"stripe.{operation}")
        if armed is not None:
            self.sandbox.add_fault(armed)
        self.faults[fault] += 1
        before = _succeeded()
        try:
            with commits():
                return service()
        except AppError:
            return None
        finally:
            self.sandbox.clear_faults()
            self.moved[fault] += _succeeded() - before

    # --- payments and their refunds
    @rule(target=payments, amount=st.integers(100, 50_000), fault=st.sampled_from(FAULTS))
    def pay(self, amount: int, fault: str) -> object:
        from providers.payments import payment_initiate

        pay = lambda: payment_initiate(  # noqa: E731
            user=self.buyer, amount=Money(amount, USD), client_key=uuid.uuid4().hex,
            explicit=Choice("stripe", "card"), payment_method_token="pm_card_visa",
        )  # fmt: skip
        return self._call(fault, "payment_intents.create", pay)

    @rule(payment=payments, amount=st.integers(1, 60_000), fault=st.sampled_from(FAULTS))
    def refund(self, payment: Payment | None, amount: int, fault: str) -> None:
        from providers.payments import refund_request

        if payment is None:
            return
        refund = lambda: refund_request(  # noqa: E731
            reference=payment.reference, amount=Money(amount, USD), client_key=uuid.uuid4().hex, actor=self.payer
        )
        self._call(fault, "refunds.create", refund)

    # --- escrow deals
    @rule(target=deals, amount=st.integers(500, 80_000), fault=st.sampled_from(FAULTS))
    def deal_open(self, amount: int, fault: str) -> object:
        from escrow.deals import deal_create

        create = lambda: deal_create(  # noqa: E731
            buyer=self.buyer, seller_account=self.seller.stripe_account_id, amount=Money(amount, USD),
            deadline=timezone.now() + timedelta(days=2), timeout_policy=EscrowDeal.TimeoutPolicy.REFUND,
            payment_method="pm_card_visa", client_key=uuid.uuid4().hex,
        )  # fmt: skip
        return self._call(fault, "payment_intents.create", create)

    @rule(deal=deals, fault=st.sampled_from(FAULTS))
    def deal_release(self, deal: EscrowDeal | None, fault: str) -> None:
        from escrow.deals import deal_release

        if deal is not None:
            self._call(fault, "payment_intents.capture", lambda: deal_release(deal_id=deal.pk, actor=self.buyer))

    @rule(deal=deals, fault=st.sampled_from(FAULTS))
    def deal_cancel(self, deal: EscrowDeal | None, fault: str) -> None:
        from escrow.deals import deal_cancel

        if deal is not None:
            cancel = lambda: deal_cancel(deal_id=deal.pk, actor=self.seller.user, reason="chaos")  # noqa: E731
            self._call(fault, "payment_intents.cancel", cancel)

    @rule(deal=deals, fault=st.sampled_from(FAULTS))
    def deal_time_out(self, deal: EscrowDeal | None, fault: str) -> None:
        from escrow.deals import deal_timeouts_run

        if deal is not None:
            overdue(deal)
            self._call(fault, "payment_intents.cancel", deal_timeouts_run)

    # --- purchases
    @rule(target=purchases, fault=st.sampled_from(FAULTS))
    def purchase_buy(self, fault: str) -> object:
        from escrow.purchases import purchase_create

        buy = lambda: purchase_create(  # noqa: E731
            buyer=self.purchaser, service_code=self.service, currency=USD, payment_method="pm_card_visa",
            client_key=uuid.uuid4().hex,
        )  # fmt: skip
        return self._call(fault, "payment_intents.create", buy)

    @rule(purchase=purchases, delivered=st.booleans(), fault=st.sampled_from(FAULTS))
    def purchase_outcome(self, purchase: Purchase | None, delivered: bool, fault: str) -> None:
        from escrow.purchases import purchase_report_delivery

        if purchase is None:
            return
        outcome = Purchase.Outcome.DELIVERED if delivered else Purchase.Outcome.FAILED
        report = lambda: purchase_report_delivery(purchase_id=purchase.pk, actor=self.deliverer, outcome=outcome)  # noqa: E731
        self._call(fault, "payment_intents.capture" if delivered else "payment_intents.cancel", report)

    @rule(purchase=purchases, fault=st.sampled_from(FAULTS))
    def purchase_cancel(self, purchase: Purchase | None, fault: str) -> None:
        from escrow.purchases import purchase_cancel

        if purchase is not None:
            cancel = lambda: purchase_cancel(purchase_id=purchase.pk, actor=self.purchaser)  # noqa: E731
            self._call(fault, "payment_intents.cancel", cancel)

    @rule(purchase=purchases, fault=st.sampled_from(FAULTS))
    def purchase_time_out(self, purchase: Purchase | None, fault: str) -> None:
        from escrow.purchases import purchases_time_out_due

        if purchase is not None:
            Purchase.objects.filter(pk=purchase.pk).update(deliver_by=timezone.now() - timedelta(minutes=1))
            self._call(fault, "payment_intents.cancel", purchases_time_out_due)

    @rule(purchase=purchases, amount=st.integers(1, 6_000), fault=st.sampled_from(FAULTS))
    def purchase_refund(self, purchase: Purchase | None, amount: int, fault: str) -> None:
        from escrow.purchases import purchase_refund

        if purchase is None:
            return
        refund = lambda: purchase_refund(  # noqa: E731
            purchase_id=purchase.pk, amount=Money(amount, USD), actor=self.finance, client_key=uuid.uuid4().hex
        )
        self._call(fault, "refunds.create", refund)

    # --- payouts to a winner's connected account
    @rule(fault=st.sampled_from(FAULTS))
    def payout(self, fault: str) -> None:
        with commits():
            rows_payouts.prepare_stripe(self.case)
        self._call(fault, "transfers.create", lambda: rows_payouts.trigger_execute(self.case))

    # --- webhooks and the beat jobs
    @rule(weather=st.sampled_from(WEBHOOK_WEATHER), count=st.integers(1, 4))
    def webhooks(self, weather: str, count: int) -> None:
        """The next Stripe webhooks are dropped for good or sent twice; the ones held back so far arrive late
        (maybe newest first), or the poller runs ahead of them; or a forged one comes in."""
        self.faults[f"webhooks_{weather}"] += 1
        if weather in ("clear", "drop", "duplicate"):
            self.case.webhooks_to_us("stripe", **({} if weather == "clear" else {weather: count}))
        elif weather == "poller_ahead":
            harness.make_due()
            harness.run_sweepers()
        elif weather == "forged":
            self._forged_webhook()
        else:
            self.sandbox.webhooks.wait_idle()
            if weather == "reordered":
                with harness._relay_lock:
                    harness.RELAYED.reverse()
            harness.deliver_webhooks(self.sandbox)

    def _forged_webhook(self) -> None:
        body = json.dumps({"id": f"evt_{uuid.uuid4().hex}", "type": "payment_intent.succeeded",
                           "data": {"object": {"id": "pi_forged", "amount": 10**6}}}).encode()  # fmt: skip
        entries = Entry.objects.count()
        answer = Client().post(
            "/webhooks/stripe/", data=body, content_type="application/json",
            headers={"Stripe-Signature": f"t={int(timezone.now().timestamp())},v1={'0' * 64}"},
        )  # fmt: skip
        assert answer.status_code == 400, answer.content
        assert Entry.objects.count() == entries
        assert not WebhookEvent.objects.filter(signature_valid=True, body__contains="pi_forged").exists()

    @rule()
    def settle(self) -> None:
        world.time_passes()
        harness.sweep_until_quiet(self.sandbox, at_least=2)
        assert_bank_invariant(settled=True)

    @invariant()
    def bank_invariant(self) -> None:
        assert_bank_invariant(settled=False)

    def teardown(self) -> None:
        try:
            self.sandbox.clear_faults()
            self.case.webhooks_to_us("stripe")
            world.time_passes()
            harness.sweep_until_quiet(self.sandbox, at_least=2)
            report = assert_bank_invariant(settled=True)
            for fault, count in self.faults.items():
                results.record(SCENARIO, fault, tried=count, moved=self.moved[fault])
            results.record(SCENARIO, "whole run, then settled", moved=report.moved, report=report)
        finally:
            transaction.savepoint_rollback(self.savepoint)
            self.sandbox.reset()
            harness.relay_clear()
            world.breakers_reset()
            forget_account_facts()


def test_the_bank_invariant_holds_through_random_interleavings_under_faults(fast_sandbox, default_payment_config):
    stripe_sandbox.state_of(fast_sandbox)  # the Stripe sandbox is installed
    Bank.sandbox = fast_sandbox
    run_state_machine_as_test(
        Bank,
        settings=settings(
            max_examples=10,
            stateful_step_count=30,
            deadline=None,
            derandomize=False,
            suppress_health_check=list(HealthCheck),
            database=None,
            phases=(Phase.explicit, Phase.generate),  # no shrinking: a failing run is reported as it ran, in time
        ),
    )
