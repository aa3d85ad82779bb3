"""The orchestrator on the one money-moving protocol: the fault paths, against the sandbox over real HTTP."""

import uuid
from datetime import timedelta

import httpx
import pytest
from django.contrib.auth.models import Permission
from django.utils import timezone

from core.money import Money
from ledger.models import Account
from ledger.selectors import account_balance
from providers import gateways
from providers.breaker import shared_redis
from providers.models import MoneyMovement, Payment, Refund
from providers.payment_webhooks import stripe_payment_succeeded
from providers.payments import payment_initiate, refund_request
from providers.protocol import engine, movements_sweep
from providers.routing import Choice
from providers.sandbox import paymongo as paymongo_sandbox
from providers.sandbox import stripe as stripe_sandbox
from providers.sandbox.server import Fault

CARD = Choice("stripe", "card")


@pytest.fixture(autouse=True)
def _isolated(settings, default_payment_config):
    prefix = settings.PROVIDER_STATE_KEY_PREFIX = f"test:payments-protocol:{uuid.uuid4().hex}"
    settings.PROVIDER_RETRY_ATTEMPTS = 1
    yield
    client = shared_redis()
    for key in client.scan_iter(f"{prefix}:*") if client else []:
        client.delete(key)


@pytest.fixture
def buyer(django_user_model):
    return django_user_model.objects.create_user(f"buyer-{uuid.uuid4().hex[:6]}")


@pytest.fixture
def finance(django_user_model):
    user = django_user_model.objects.create_user(f"finance-{uuid.uuid4().hex[:6]}", is_staff=True)
    user.user_permissions.add(Permission.objects.get(codename="add_refund"))
    return django_user_model.objects.get(pk=user.pk)


def balance(code: str) -> int:
    return account_balance(Account.objects.get(code=code)).posted.minor


def sweep_until_quiet(rounds: int = 8) -> None:
    """The beat job, with time moved on: every open movement is due again each round."""
    for _ in range(rounds):
        past = timezone.now() - timedelta(seconds=1)
        MoneyMovement.objects.filter(status__in=MoneyMovement.OPEN).update(next_sync_at=past, claimed_until=None)
        if not movements_sweep():
            return


def card_payment(buyer, key: str, amount: int = 10_000) -> Payment:
    return payment_initiate(
        user=buyer, amount=Money(amount, "USD"), client_key=key, explicit=CARD, payment_method_token="pm_card_visa"
    )


@pytest.mark.django_db
def test_a_webhook_before_the_call_returns_finds_the_provider_and_fee_on_the_row(sandbox, buyer, monkeypatch):
    original = gateways.StripeCardGateway.start

    def start_then_webhook(self, payment, key):
        result = original(self, payment, key)  # Stripe took it; its webhook overtakes our answer
        stripe_payment_succeeded(None, {"data": {"object": result.raw}})
        return result

    monkeypatch.setattr(gateways.StripeCardGateway, "start", start_then_webhook)
    payment = card_payment(buyer, "early-webhook")
    assert payment.status == Payment.Status.SUCCEEDED
    assert balance("provider:stripe:clearing:USD") == 10_000 - 320  # the fee too: the row had it before the call
    assert not Account.objects.filter(code__startswith="provider::").exists()
    monkeypatch.undo()
    finance_user = type(buyer).objects.create_user("f-early", is_staff=True)
    finance_user.user_permissions.add(Permission.objects.get(codename="add_refund"))
    finance_user = type(buyer).objects.get(pk=finance_user.pk)
    refund = refund_request(reference=payment.reference, amount=None, client_key="all", actor=finance_user)
    assert refund.status == Refund.Status.SUCCEEDED  # a later refund of that payment works


@pytest.mark.django_db
def test_the_process_dying_after_the_provider_answered_is_found_by_the_sweeper(sandbox, buyer, monkeypatch):
    class Died(BaseException):
        pass

    def die(*args, **kwargs):
        raise Died

    monkeypatch.setattr(engine, "_record", die)
    with pytest.raises(Died):
        card_payment(buyer, "dies")
    monkeypatch.undo()
    payment = Payment.objects.get(client_key="dies")
    (movement,) = MoneyMovement.objects.filter(operation="payment.start")
    assert movement.status == MoneyMovement.Status.PENDING and movement.next_sync_at is not None
    sweep_until_quiet()
    payment.refresh_from_db()
    assert payment.status == Payment.Status.SUCCEEDED
    assert len(stripe_sandbox.state_of(sandbox).payment_intents) == 1  # found by the look-up, not charged again
    assert balance("platform:customer-payments:USD") == 10_000


@pytest.mark.parametrize(
    "refusal",
    [
        {"status": 400, "body": {"error": {"type": "invalid_request_error", "code": "charge_already_refunded"}}},
        {"status": 429, "body": {"error": {"type": "rate_limit_error", "message": "slow down"}}},
        {"status": 503},
    ],
    ids=["already-refunded", "rate-limited", "unavailable"],
)
@pytest.mark.django_db
def test_an_unknown_refund_is_never_failed_by_a_refused_resend(sandbox, buyer, finance, refusal):
    payment = card_payment(buyer, "r")
    sandbox.add_fault(Fault(operation="stripe.refunds.create", kind="applied_then_timeout"))
    sandbox.add_fault(Fault(operation="stripe.refunds.*", kind="error", times=None, **refusal))
    refund = refund_request(reference=payment.reference, amount=Money(4_000, "USD"), client_key="a", actor=finance)
    assert refund.status == Refund.Status.UNKNOWN
    sweep_until_quiet(rounds=2)
    refund.refresh_from_db()
    assert refund.status == Refund.Status.UNKNOWN  # refused look-ups and re-sends prove nothing
    payment.refresh_from_db()
    assert payment.refunded_minor == 4_000  # still reserved: it cannot be requested again
    sandbox.clear_faults()
    sweep_until_quiet()
    refund.refresh_from_db()
    assert refund.status == Refund.Status.SUCCEEDED
    assert [r["amount"] for r in stripe_sandbox.state_of(sandbox).refunds.values()] == [4_000]
    assert balance("platform:customer-payments:USD") == 6_000


@pytest.mark.django_db
def test_gcash_with_webhooks_dropped_completes_by_the_sweeper_and_a_pending_refund_is_not_posted(
    sandbox, buyer, finance
):
    payment = payment_initiate(user=buyer, amount=Money(50_000, "PHP"), client_key="g1")
    assert payment.status == Payment.Status.REQUIRES_ACTION  # no webhooks are configured: all are lost
    httpx.post(f"{sandbox.url}/paymongo/_simulate/sources/{payment.provider_reference}/authorize", json={})
    sweep_until_quiet()
    payment.refresh_from_db()
    assert payment.status == Payment.Status.SUCCEEDED
    assert len(paymongo_sandbox.state_of(sandbox).payments) == 1
    refund = refund_request(reference=payment.reference, amount=Money(10_000, "PHP"), client_key="x", actor=finance)
    assert refund.status == Refund.Status.WAITING  # PayMongo answers pending: accepted, not success
    movement = MoneyMovement.objects.get(operation="payment.refund")
    assert movement.status == MoneyMovement.Status.WAITING
    assert balance("platform:customer-payments:PHP") == 50_000  # nothing posted yet
    sandbox.tick()  # PayMongo settles it
    sweep_until_quiet()
    refund.refresh_from_db()
    assert refund.status == Refund.Status.SUCCEEDED
    assert balance("platform:customer-payments:PHP") == 40_000


@pytest.mark.django_db
def test_a_stripe_success_webhook_for_an_escrow_payment_intent_is_not_a_customer_payment(sandbox, buyer):
    payment = card_payment(buyer, "mine")
    stripe_payment_succeeded(None, {"data": {"object": {"id": "pi_other", "status": "succeeded", "metadata": {}}}})
    payment.refresh_from_db()
    assert payment.provider_reference != "pi_other"
    assert MoneyMovement.objects.filter(operation="payment.start", provider_reference="pi_other").count() == 0


@pytest.mark.django_db
def test_staff_sync_an_unknown_movement_now_from_the_admin_and_it_is_audited(sandbox, buyer, finance, admin_client):
    from core.models import AuditLog

    payment = card_payment(buyer, "adm-sync")
    sandbox.add_fault(Fault(operation="stripe.refunds.create", kind="applied_then_timeout"))
    refund = refund_request(reference=payment.reference, amount=Money(2_500, "USD"), client_key="s", actor=finance)
    movement = MoneyMovement.objects.get(operation="payment.refund")
    assert movement.status == MoneyMovement.Status.UNKNOWN
    page = admin_client.get("/admin/providers/moneymovement/").content.decode()
    assert movement.key in page and "Outcome unknown" in page
    response = admin_client.post(
        "/admin/providers/moneymovement/", {"action": "sync_now", "_selected_action": [movement.pk]}, follow=True
    )
    assert response.status_code == 200
    refund.refresh_from_db()
    assert refund.status == Refund.Status.SUCCEEDED
    assert len(stripe_sandbox.state_of(sandbox).refunds) == 1
    assert AuditLog.objects.filter(action="providers.movement.sync", object_id=str(movement.pk)).count() == 1


@pytest.mark.django_db
def test_a_hook_that_keeps_failing_still_ends_in_one_staff_alert(sandbox, buyer, finance, monkeypatch):
    from core.models import Alert
    from providers.payment_operations import PaymentRefund

    payment = card_payment(buyer, "broken-hook")
    sandbox.add_fault(Fault(operation="stripe.refunds.create", kind="applied_then_timeout"))
    refund_request(reference=payment.reference, amount=Money(1_000, "USD"), client_key="b", actor=finance)

    def broken(self, movement, result):
        raise RuntimeError("a bug in the refund hook")

    monkeypatch.setattr(PaymentRefund, "on_succeeded", broken)
    sweep_until_quiet(rounds=len(engine.SYNC_SCHEDULE) + 2)
    movement = MoneyMovement.objects.get(operation="payment.refund")
    assert movement.status == MoneyMovement.Status.UNKNOWN and movement.next_sync_at is None
    assert "a bug in the refund hook" in movement.failure_reason
    assert Alert.objects.filter(key=f"movement:{movement.key}", status=Alert.Status.OPEN).count() == 1
    assert balance("platform:customer-payments:USD") == 10_000  # nothing posted by the broken hook
