"""The payment orchestrator against the sandbox over real HTTP."""

import threading
import uuid
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from django.contrib.auth.models import Permission
from django.db import connections

from core.errors import IdempotencyMismatch, InvalidRequest, PermissionDenied
from core.money import Money
from ledger.models import Account
from ledger.selectors import account_balance
from providers.base import Unknown
from providers.breaker import breaker_for, shared_redis
from providers.models import Payment, PaymentAttempt, Refund
from providers.payments import payment_initiate, payment_sync, refund_request
from providers.routing import Choice
from providers.sandbox import maya as maya_sandbox
from providers.sandbox import paymongo as paymongo_sandbox
from providers.sandbox import stripe as stripe_sandbox
from providers.sandbox.server import Fault

CARD = Choice("stripe", "card")


@pytest.fixture(autouse=True)
def _isolated(settings, default_payment_config):
    prefix = settings.PROVIDER_STATE_KEY_PREFIX = f"test:payments:{uuid.uuid4().hex}"
    settings.PROVIDER_RETRY_ATTEMPTS = 1  # a retry is a keyed replay; keep call counts exact here
    yield
    client = shared_redis()
    for key in client.scan_iter(f"{prefix}:*") if client else []:
        client.delete(key)


@pytest.fixture
def finance(django_user_model):
    user = django_user_model.objects.create_user(f"finance-{uuid.uuid4().hex[:6]}", is_staff=True)
    user.user_permissions.add(Permission.objects.get(codename="add_refund"))
    return django_user_model.objects.get(pk=user.pk)


@pytest.fixture
def buyer(django_user_model):
    return django_user_model.objects.create_user(f"buyer-{uuid.uuid4().hex[:6]}")


def balance(code: str) -> int:
    return account_balance(Account.objects.get(code=code)).posted.minor


@pytest.mark.django_db
def test_card_payment_succeeds_and_is_posted_once(sandbox, buyer):
    payment = payment_initiate(
        user=buyer, amount=Money(10_000, "USD"), client_key="k1", explicit=CARD, payment_method_token="pm_card_visa"
    )
    assert (payment.status, payment.provider) == (Payment.Status.SUCCEEDED, "stripe")
    assert payment.provider_reference.startswith("pi_")
    assert payment.fee_minor == 290 + 30
    assert balance("provider:stripe:clearing:USD") == 10_000 - 320
    assert balance("platform:customer-payments:USD") == 10_000
    assert balance("platform:provider-fees:stripe:USD") == 320
    again = payment_initiate(user=buyer, amount=Money(10_000, "USD"), client_key="k1", explicit=CARD)
    assert again.pk == payment.pk
    assert sandbox.calls["stripe.payment_intents.create"] == 1
    with pytest.raises(IdempotencyMismatch):
        payment_initiate(user=buyer, amount=Money(9_999, "USD"), client_key="k1", explicit=CARD)


@pytest.mark.django_db
def test_a_declined_card_with_an_explicit_choice_fails_without_fallback(sandbox, buyer):
    payment = payment_initiate(
        user=buyer, amount=Money(5_000, "PHP"), client_key="k2", explicit=CARD,
        payment_method_token="pm_card_chargeDeclined",
    )  # fmt: skip
    assert payment.status == Payment.Status.FAILED
    assert [a.status for a in payment.attempts.all()] == [PaymentAttempt.Status.DECLINED]
    assert not Account.objects.filter(code__startswith="provider:").exists()


@pytest.mark.django_db
def test_falls_back_only_after_a_known_decline(sandbox, buyer):
    sandbox.add_fault(Fault(operation="paymongo.sources.create", kind="error", status=400))
    payment = payment_initiate(user=buyer, amount=Money(50_000, "PHP"), client_key="k3")
    assert [(a.provider, a.status) for a in payment.attempts.all()] == [
        ("gcash", "declined"),
        ("maya", "requires_action"),
    ]
    assert payment.status == Payment.Status.REQUIRES_ACTION
    assert payment.redirect_url.startswith(sandbox.url)
    assert payment.routing_decision.candidates[0]["provider"] == "gcash"


@pytest.mark.django_db
def test_unknown_stops_the_payment_and_a_sync_finds_the_one_movement(sandbox, buyer):
    sandbox.add_fault(Fault(operation="paymongo.sources.create", kind="applied_then_timeout"))
    payment = payment_initiate(user=buyer, amount=Money(50_000, "PHP"), client_key="k4")
    assert payment.status == Payment.Status.UNKNOWN
    assert sandbox.calls["maya.checkouts.create"] == 0  # never a fallback after unknown
    (attempt,) = payment.attempts.all()
    assert len(paymongo_sandbox.state_of(sandbox).sources) == 1  # PayMongo did create it

    synced = payment_sync(reference=payment.reference)
    assert synced.status == Payment.Status.REQUIRES_ACTION
    assert synced.provider_reference in paymongo_sandbox.state_of(sandbox).sources
    assert len(paymongo_sandbox.state_of(sandbox).sources) == 1  # the same key replayed: still one
    assert PaymentAttempt.objects.get(pk=attempt.pk).idempotency_key == attempt.idempotency_key


@pytest.mark.django_db
def test_an_unknown_card_charge_resolves_to_exactly_one_payment_intent(sandbox, buyer):
    sandbox.add_fault(Fault(operation="stripe.payment_intents.create", kind="applied_then_timeout"))
    payment = payment_initiate(
        user=buyer, amount=Money(7_000, "USD"), client_key="k5", explicit=CARD, payment_method_token="pm_card_visa"
    )
    assert payment.status == Payment.Status.UNKNOWN
    assert not Account.objects.filter(code="provider:stripe:clearing:USD").exists()
    synced = payment_sync(reference=payment.reference)
    assert synced.status == Payment.Status.SUCCEEDED
    assert len(stripe_sandbox.state_of(sandbox).payment_intents) == 1
    assert balance("platform:customer-payments:USD") == 7_000


@pytest.mark.django_db
def test_an_open_circuit_routes_to_the_next_provider(sandbox, buyer):
    gcash = breaker_for("gcash")
    while not gcash.state().is_open:
        gcash.record(Unknown(reason="timeout"))
    payment = payment_initiate(user=buyer, amount=Money(50_000, "PHP"), client_key="k6")
    assert [a.provider for a in payment.attempts.all()] == ["maya"]
    assert {s["provider"]: s["reason"] for s in payment.routing_decision.skipped} == {"gcash": "circuit open"}
    assert sandbox.calls["paymongo.sources.create"] == 0


@pytest.mark.django_db(transaction=True)
def test_gcash_payment_completes_through_webhooks(sandbox, live_server, buyer):
    sandbox.webhooks.configure("paymongo", url=f"{live_server.url}/webhooks/gcash/", duplicate=2)
    payment = payment_initiate(user=buyer, amount=Money(50_000, "PHP"), client_key="k7")
    assert payment.status == Payment.Status.REQUIRES_ACTION
    httpx.post(f"{sandbox.url}/paymongo/_simulate/sources/{payment.provider_reference}/authorize", json={})
    sandbox.webhooks.wait_idle()
    payment.refresh_from_db()
    assert payment.status == Payment.Status.SUCCEEDED
    assert payment.provider_reference.startswith("pay_")
    assert len(paymongo_sandbox.state_of(sandbox).payments) == 1  # charged once despite duplicates
    assert balance("platform:customer-payments:PHP") == 50_000


@pytest.mark.django_db(transaction=True)
def test_maya_payment_completes_or_fails_through_webhooks(sandbox, live_server, buyer):
    sandbox.webhooks.configure("maya", url=f"{live_server.url}/webhooks/maya/")
    ok = payment_initiate(
        user=buyer, amount=Money(40_000, "PHP"), client_key="k8", explicit=Choice("maya", "maya_wallet")
    )
    bad = payment_initiate(
        user=buyer, amount=Money(40_000, "PHP"), client_key="k9", explicit=Choice("maya", "maya_wallet")
    )
    httpx.post(f"{sandbox.url}/maya/_simulate/payments/{ok.provider_reference}/succeed")
    httpx.post(f"{sandbox.url}/maya/_simulate/payments/{bad.provider_reference}/expire")
    sandbox.webhooks.wait_idle()
    ok.refresh_from_db()
    bad.refresh_from_db()
    assert (ok.status, bad.status) == (Payment.Status.SUCCEEDED, Payment.Status.FAILED)
    assert ok.provider_reference in maya_sandbox.state_of(sandbox).payments
    assert balance("platform:customer-payments:PHP") == 40_000


@pytest.mark.django_db
def test_partial_refunds_up_to_the_amount(sandbox, buyer, finance):
    payment = payment_initiate(
        user=buyer, amount=Money(10_000, "USD"), client_key="r1", explicit=CARD, payment_method_token="pm_card_visa"
    )
    first = refund_request(reference=payment.reference, amount=Money(4_000, "USD"), client_key="a", actor=finance)
    assert first.status == Refund.Status.SUCCEEDED
    assert (
        refund_request(reference=payment.reference, amount=Money(4_000, "USD"), client_key="a", actor=finance).pk
        == first.pk
    )
    with pytest.raises(InvalidRequest) as error:
        refund_request(reference=payment.reference, amount=Money(6_001, "USD"), client_key="b", actor=finance)
    assert error.value.details["refundable_minor"] == 6_000
    with pytest.raises(PermissionDenied):
        refund_request(reference=payment.reference, amount=Money(1, "USD"), client_key="d", actor=buyer)
    rest = refund_request(reference=payment.reference, amount=None, client_key="c", actor=finance)
    assert rest.amount_minor == 6_000
    payment.refresh_from_db()
    assert payment.refunded_minor == 10_000
    assert balance("platform:customer-payments:USD") == 0
    assert sum(r["amount"] for r in stripe_sandbox.state_of(sandbox).refunds.values()) == 10_000


@pytest.mark.django_db(transaction=True)
@pytest.mark.slow
def test_twenty_concurrent_partial_refunds_never_exceed_the_captured_amount(sandbox, buyer, finance):
    payment = payment_initiate(
        user=buyer, amount=Money(10_000, "USD"), client_key="r2", explicit=CARD, payment_method_token="pm_card_visa"
    )
    barrier = threading.Barrier(20)

    def refund(n: int) -> str:
        barrier.wait()
        try:
            return refund_request(
                reference=payment.reference, amount=Money(1_500, "USD"), client_key=f"r-{n}", actor=finance
            ).status
        except InvalidRequest:
            return "refused"
        finally:
            connections.close_all()

    with ThreadPoolExecutor(max_workers=20) as pool:
        outcomes = list(pool.map(refund, range(20)))
    assert outcomes.count("succeeded") == 6  # 6 x 1,500 = 9,000 <= 10,000 < 7 x 1,500
    assert outcomes.count("refused") == 14
    payment.refresh_from_db()
    assert payment.refunded_minor == 9_000
    assert sum(r["amount"] for r in stripe_sandbox.state_of(sandbox).refunds.values()) == 9_000
    assert balance("platform:customer-payments:USD") == 1_000


@pytest.mark.django_db
def test_finance_staff_see_payments_with_attempts_refunds_and_routing(sandbox, buyer, admin_client):
    sandbox.add_fault(Fault(operation="paymongo.sources.create", kind="error", status=400))
    payment = payment_initiate(user=buyer, amount=Money(50_000, "PHP"), client_key="adm")
    page = admin_client.get(f"/admin/providers/payment/{payment.pk}/change/").content.decode()
    assert "₱500.00" in page
    assert "declined" in page and "requires_action" in page  # both attempts, in order
    assert "priority: candidates gcash/gcash, maya/maya_wallet, stripe/card" in page
    assert admin_client.get("/admin/providers/payment/").status_code == 200
    assert admin_client.get("/admin/providers/routingdecision/").status_code == 200


@pytest.mark.django_db
def test_an_unknown_maya_refund_is_never_resent_only_looked_up(sandbox, buyer, finance, settings):
    settings.PROVIDER_RETRY_ATTEMPTS = 3  # retries allowed: Maya must still get the refund once
    payment = payment_initiate(
        user=buyer, amount=Money(40_000, "PHP"), client_key="m1", explicit=Choice("maya", "maya_wallet")
    )
    httpx.post(f"{sandbox.url}/maya/_simulate/payments/{payment.provider_reference}/succeed")
    payment = payment_sync(reference=payment.reference)
    assert payment.status == Payment.Status.SUCCEEDED
    sandbox.tick()  # the next day: Maya refunds settled payments
    sandbox.add_fault(Fault(operation="maya.payments.refund", kind="applied_then_timeout"))

    refund = refund_request(reference=payment.reference, amount=Money(10_000, "PHP"), client_key="r", actor=finance)
    assert refund.status == Refund.Status.UNKNOWN
    assert sandbox.calls["maya.payments.refund"] == 1  # not retried under the same or any reference
    payment_sync(reference=payment.reference)  # staff "sync now": the protocol looks the refund up
    refund.refresh_from_db()
    assert refund.status == Refund.Status.SUCCEEDED
    assert sandbox.calls["maya.payments.refund"] == 1  # found by lookup, not sent again
    assert balance("platform:customer-payments:PHP") == 30_000
