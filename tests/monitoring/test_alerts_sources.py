"""Every alert source raises through core.alerts: one alert per cause (a repeat counts an occurrence), emailed
once to the finance group after commit, and resolved by its source when the cause clears or by staff (audited).
"""

from __future__ import annotations

import uuid
from datetime import UTC, date, datetime, time, timedelta
from time import sleep

import pytest
from django.contrib.auth.models import Group, User
from django.test import Client
from django.utils import timezone

from core.locks import lock_release_by_staff, locks_stale_check, processing_lock
from core.models import Alert, AuditLog, ProcessingLock
from core.money import Money
from core.roles import roles_sync
from escrow.deals import deal_release, deal_timeouts_run, deal_transfer_retry
from escrow.models import EscrowDeal
from monitoring.checks import movements_unknown_check
from monitoring.reconciliation import issue_resolve, reconciliation_run
from payouts.models import PayoutBatch, PayoutCycle, PayoutItem, WinnerSelection
from payouts.services import batch_retry_failed, batch_sync, cycle_disburse, item_apply_status, winnings_fund
from providers.base import Succeeded, Unknown
from providers.breaker import breaker_for
from providers.health import breaker_reset
from providers.models import MoneyMovement
from providers.protocol import Operation, movement_record, movement_resolve, movement_sync, movements_sweep
from providers.protocol.engine import SYNC_SCHEDULE
from providers.retry import call_provider
from providers.sandbox import stripe as stripe_sandbox
from providers.sandbox.server import Fault
from providers.stripe.client import BalanceMovement
from tests.escrow.factories_deals import UserFactory, held_deal, seller

pytestmark = pytest.mark.django_db
FINANCE_EMAIL = "finance-operator@example.com"


@pytest.fixture(autouse=True)
def _isolated(settings):
    settings.PROVIDER_STATE_KEY_PREFIX = f"test:alert-sources:{uuid.uuid4().hex}"
    settings.PROVIDER_RETRY_ATTEMPTS = 1
    settings.PROVIDER_RETRY_BASE_DELAY_SECONDS = 0
    settings.ALERT_EMAILS = []


@pytest.fixture
def approver() -> User:
    """A finance approver with an email address: the alert emails reach them; they may close alerts."""
    groups = Group.objects.filter(name__in=["Finance approver", "Finance operator"])
    if groups.count() != 2:  # kept by post_migrate; a transactional test's flush may have removed them
        roles_sync()
    user = User.objects.create_user(f"approver-{uuid.uuid4().hex[:6]}", email=FINANCE_EMAIL, is_staff=True)
    user.groups.set(groups)
    return User.objects.get(pk=user.pk)


@pytest.fixture
def committed(django_capture_on_commit_callbacks):
    """Run the code under test as if each of its transactions committed (the emails are sent on commit)."""
    return lambda: django_capture_on_commit_callbacks(execute=True)


def the_alert(key: str) -> Alert:
    return Alert.objects.get(key=key)  # exactly one row for the cause


def emails_about(mailoutbox, key: str) -> list:
    return [mail for mail in mailoutbox if f"Alert key: {key}\n" in mail.body]


def resolved_by_the_system(alert: Alert) -> bool:
    alert.refresh_from_db()
    audit = AuditLog.objects.filter(action="core.alert.resolved", object_id=str(alert.pk), actor_repr="system")
    return alert.status == Alert.Status.RESOLVED and audit.count() == 1


def resolved_by_staff_in_the_admin(alert: Alert, user: User) -> bool:
    client = Client()
    client.force_login(user)
    client.post("/admin/core/alert/", {"action": "resolve", "_selected_action": [alert.pk]}, follow=True)
    alert.refresh_from_db()
    audit = AuditLog.objects.filter(action="core.alert.resolved", object_id=str(alert.pk), actor=user)
    return alert.status == Alert.Status.RESOLVED and audit.count() == 1


# --- the money protocol ---------------------------------------------------------------------------------


class NobodyKnows(Operation):
    """A movement whose provider can never tell us what happened (no look-up, outside the key window)."""

    name = "test.alerts.nobody_knows"
    provider = "stripe"

    def send(self, movement: MoneyMovement) -> Unknown:
        return Unknown(reason="timed out")


@pytest.fixture
def lost_movement(monkeypatch) -> MoneyMovement:
    """Sent two days ago, outcome unknown ever since, its last scheduled look now due."""
    monkeypatch.setitem(_operations(), NobodyKnows.name, NobodyKnows())
    movement = movement_record(
        operation=NobodyKnows.name, subject_id=1, key=f"test:{uuid.uuid4().hex}", amount=Money(5_000, "USD")
    )
    two_days_ago = timezone.now() - timedelta(days=2)
    MoneyMovement.objects.filter(pk=movement.pk).update(
        status=MoneyMovement.Status.UNKNOWN, sends=1, first_sent_at=two_days_ago, created_at=two_days_ago,
        sync_attempts=len(SYNC_SCHEDULE), next_sync_at=timezone.now() - timedelta(minutes=1),
    )  # fmt: skip
    return MoneyMovement.objects.get(pk=movement.pk)


def _operations() -> dict:
    from providers.protocol import operations

    return operations._operations


def test_an_escalated_movement_alerts_once_and_resolves_when_it_is_found_out(lost_movement, approver, committed,
                                                                             mailoutbox):  # fmt: skip
    key = f"movement:{lost_movement.key}"
    with committed():
        assert movements_sweep() == 1  # the schedule has run out: escalated
        movement_sync(movement_id=lost_movement.pk, force=True)  # staff's "Sync now": still nobody knows
    alert = the_alert(key)
    assert (alert.status, alert.occurrences, alert.severity) == (Alert.Status.OPEN, 2, Alert.Severity.CRITICAL)
    assert len(emails_about(mailoutbox, key)) == 1 and mailoutbox[0].to == [FINANCE_EMAIL]
    assert "$50.00" in alert.title and lost_movement.key in mailoutbox[0].body

    movement_resolve(movement=lost_movement, result=Succeeded(reference="tr_found"))  # e.g. a verified webhook
    assert resolved_by_the_system(alert)


def test_unknown_outcomes_past_the_threshold_alert_per_provider_and_resolve_when_none_is_left(
    lost_movement, approver, committed, mailoutbox, settings
):
    settings.ALERT_UNKNOWN_AFTER_MINUTES = 60
    fresh = movement_record(operation=NobodyKnows.name, subject_id=2, key=f"test:{uuid.uuid4().hex}")
    MoneyMovement.objects.filter(pk=fresh.pk).update(status=MoneyMovement.Status.UNKNOWN, first_sent_at=timezone.now())
    with committed():
        assert movements_unknown_check() == {"stripe": 1}  # the fresh one is not past the threshold
        assert movements_unknown_check() == {"stripe": 1}
    alert = the_alert("movements:unknown:stripe")
    assert (alert.occurrences, alert.severity) == (2, Alert.Severity.WARNING)
    assert lost_movement.key in alert.detail and fresh.key not in alert.detail
    assert len(emails_about(mailoutbox, alert.key)) == 1

    MoneyMovement.objects.filter(pk=lost_movement.pk).update(status=MoneyMovement.Status.SUCCEEDED)
    assert movements_unknown_check() == {}
    assert resolved_by_the_system(alert)


# --- circuit breakers -----------------------------------------------------------------------------------


BACKOFF = 0.2  # seconds before an open circuit lets a trial call through


def test_a_circuit_opening_alerts_once_and_resolves_when_it_closes(approver, committed, mailoutbox, settings):
    settings.PROVIDER_BREAKERS = {
        "maya": {"failure_threshold": 2, "success_threshold": 1, "base_backoff_seconds": BACKOFF,
                 "max_backoff_seconds": BACKOFF, "jitter": 0.0},
    }  # fmt: skip
    timeout = Unknown(reason="ReadTimeout")

    def call(result):
        return call_provider("maya", "checkout", lambda: result, idempotent=False)

    with committed():
        call(timeout), call(timeout)  # the second failure in a row opens it
        assert breaker_for("maya").state().is_open
        sleep(BACKOFF)
        call(timeout)  # the half-open trial fails: open again, the same cause
    alert = the_alert("circuit:maya")
    assert (alert.status, alert.occurrences) == (Alert.Status.OPEN, 2)
    assert len(emails_about(mailoutbox, alert.key)) == 1

    sleep(BACKOFF)
    call(Succeeded(reference="chk_1"))  # the trial succeeds: closed
    assert resolved_by_the_system(alert)


def test_a_circuit_reset_by_staff_resolves_its_alert(approver, settings):
    settings.PROVIDER_BREAKERS = {"gcash": {"failure_threshold": 1}}
    call_provider("gcash", "source", lambda: Unknown(reason="reset"), idempotent=False)
    alert = the_alert("circuit:gcash")
    breaker_reset(provider="gcash", actor=approver)
    assert resolved_by_the_system(alert)
    assert AuditLog.objects.filter(action="providers.breaker.reset", actor=approver).count() == 1


# --- payouts --------------------------------------------------------------------------------------------


def paypal_cycle(*receivers: str) -> PayoutCycle:
    cycle = PayoutCycle.objects.create(name="November")
    for n, receiver in enumerate(receivers):
        WinnerSelection.objects.create(
            cycle=cycle, user=UserFactory(), amount_minor=10_000 * (n + 1), currency="USD", recipient_type="EMAIL",
            recipient=receiver,
        )  # fmt: skip
    winnings_fund(amount=Money(1_000_000, "USD"), reference=f"pool-{cycle.pk}")
    return cycle


def test_payouts_that_end_unpaid_count_on_one_batch_alert_until_a_retry_batch_pays_them(
    sandbox, approver, committed, mailoutbox
):
    cycle = paypal_cycle("paid@example.com", "fail@example.com", "return@example.com")
    with committed():
        (batch,) = cycle_disburse(cycle_id=cycle.pk, actor=approver)
        for _ in range(3):
            sandbox.tick()
        batch_sync(batch_id=batch.pk)
    key = f"payout:batch:{batch.pk}:unpaid"
    alert = the_alert(key)
    assert (alert.status, alert.occurrences, alert.severity) == (Alert.Status.OPEN, 2, Alert.Severity.WARNING)
    assert "2 payout(s) not paid" in alert.title and batch.sender_batch_id in alert.title
    assert len(emails_about(mailoutbox, key)) == 1

    batch_retry_failed(batch_id=batch.pk, actor=approver)
    assert resolved_by_the_system(alert)

    paid = PayoutItem.objects.get(batch=batch, receiver="paid@example.com")
    with committed():
        assert item_apply_status(item_pk=paid.pk, status=PayoutItem.Status.REVERSED)  # paid, then taken back
    taken_back = the_alert(f"payout:batch:{batch.pk}:taken-back")
    assert taken_back.severity == Alert.Severity.CRITICAL and len(emails_about(mailoutbox, taken_back.key)) == 1
    assert resolved_by_staff_in_the_admin(taken_back, approver)


def test_a_batch_the_provider_refuses_alerts_once_and_resolves_with_its_retry(sandbox, approver, committed, mailoutbox):
    fault = Fault(operation="paypal.payouts.create", kind="error", status=400, body={"name": "VALIDATION_ERROR"})
    sandbox.add_fault(fault)
    with committed():
        (batch,) = cycle_disburse(cycle_id=paypal_cycle("a@example.com", "b@example.com").pk, actor=approver)
    assert batch.status == PayoutBatch.Status.DENIED
    alert = the_alert(f"payout:batch:{batch.pk}:denied")
    assert alert.severity == Alert.Severity.CRITICAL and "VALIDATION_ERROR" in alert.detail
    assert not Alert.objects.filter(key=f"payout:batch:{batch.pk}:unpaid").exists()  # one cause, one alert
    assert len(emails_about(mailoutbox, alert.key)) == 1

    batch_retry_failed(batch_id=batch.pk, actor=approver)
    assert resolved_by_the_system(alert)


# --- escrow ---------------------------------------------------------------------------------------------


def test_a_transfer_out_of_retries_alerts_once_and_resolves_when_a_retry_gets_through(
    sandbox, approver, committed, mailoutbox, settings
):
    settings.ESCROW_TRANSFER_MAX_ATTEMPTS = 1
    buyer, account = UserFactory(), seller(sandbox, transfers="inactive")
    operator = approver  # in both finance groups
    with committed():
        deal = deal_release(deal_id=held_deal(buyer, account).pk, actor=buyer)  # Stripe refuses the transfer
        deal_transfer_retry(deal_id=deal.pk, actor=operator)  # and again
    alert = the_alert(f"escrow:deal:{deal.pk}:transfer")
    assert (alert.status, alert.occurrences, alert.severity) == (Alert.Status.OPEN, 2, Alert.Severity.CRITICAL)
    assert len(emails_about(mailoutbox, alert.key)) == 1

    stripe_sandbox.account_set(sandbox, account.stripe_account_id, transfers="active")
    assert deal_transfer_retry(deal_id=deal.pk, actor=operator).status == EscrowDeal.Status.TRANSFERRED
    assert resolved_by_the_system(alert)


def test_the_timeout_breaker_tripping_alerts_once_and_staff_resolve_it(approver, committed, mailoutbox, settings):
    settings.ESCROW_TIMEOUT_MAX_DEALS_PER_RUN = 0  # trips before the first deal: no provider call
    account = seller(None)
    EscrowDeal.objects.create(
        buyer=UserFactory(), seller_account=account, amount_minor=1_000, currency="USD", commission_bps=800,
        commission_minor=80, deadline=timezone.now() - timedelta(days=1), timeout_policy="refund",
        hold_mode="authorization", status=EscrowDeal.Status.HELD, client_key=uuid.uuid4().hex,
        payment_method="pm_card_visa", authorized_at=timezone.now(),
    )  # fmt: skip
    with committed():
        assert deal_timeouts_run().stopped_by == "count"
        assert deal_timeouts_run().stopped_by == "count"
    alert = the_alert("escrow:timeouts:breaker")
    assert (alert.occurrences, alert.severity) == (2, Alert.Severity.CRITICAL)
    assert len(emails_about(mailoutbox, alert.key)) == 1
    assert resolved_by_staff_in_the_admin(alert, approver)


# --- reconciliation -------------------------------------------------------------------------------------


def stripe_day(day: date, reference: str) -> list[list[BalanceMovement]]:
    """The provider's report: one charge our ledger never recorded."""
    created = int(datetime.combine(day, time(1), tzinfo=UTC).timestamp())
    row = BalanceMovement(
        transaction_id=f"txn_{reference}", reference=reference, type="charge", amount_minor=1_000, fee_minor=59,
        net_minor=941, currency="USD", status="available", created=created,
    )  # fmt: skip
    return [[row]]


def test_reconciliation_mismatches_alert_once_per_day_and_resolve_with_the_last_issue(approver, committed,
                                                                                       mailoutbox):  # fmt: skip
    day = timezone.now().date() - timedelta(days=1)
    reference = f"pi_{uuid.uuid4().hex[:12]}"
    with committed():
        for _ in range(2):  # the nightly run, then a rerun: the same open issue
            reconciliation_run(day=day, provider="stripe", trigger="command", provider_pages=stripe_day(day, reference),
                               record_sources=[])  # fmt: skip
    alert = the_alert(f"reconciliation:stripe:{day}")
    assert (alert.occurrences, alert.severity) == (2, Alert.Severity.WARNING)
    assert len(emails_about(mailoutbox, alert.key)) == 1

    (issue,) = alert_issues(day)
    issue_resolve(issue_id=issue.pk, actor=approver, note="a test charge, refunded at Stripe by hand")
    assert resolved_by_the_system(alert)


def alert_issues(day: date) -> list:
    from monitoring.models import ReconciliationIssue

    return list(ReconciliationIssue.objects.filter(date=day, status=ReconciliationIssue.Status.OPEN))


def test_a_failed_reconciliation_run_alerts_and_the_next_good_run_resolves_it(approver, committed, mailoutbox):
    day = timezone.now().date() - timedelta(days=2)

    def broken_report():
        raise ConnectionError("Stripe's report timed out")
        yield []

    with committed(), pytest.raises(ConnectionError):
        reconciliation_run(day=day, provider="stripe", trigger="command", provider_pages=broken_report(),
                           record_sources=[])  # fmt: skip
    alert = the_alert(f"reconciliation:stripe:{day}:failed")
    assert "timed out" in alert.detail and len(emails_about(mailoutbox, alert.key)) == 1

    reconciliation_run(day=day, provider="stripe", trigger="command", provider_pages=[[]], record_sources=[])
    assert resolved_by_the_system(alert)


# --- processing locks -----------------------------------------------------------------------------------


def test_a_stale_lock_alerts_once_and_resolves_when_staff_release_it(approver, committed, mailoutbox):
    now = timezone.now()
    lock = ProcessingLock.objects.create(
        key="payout-cycle:7", holder="alice", reason="executing", acquired_at=now - timedelta(minutes=30),
        expires_at=now - timedelta(minutes=15),
    )  # fmt: skip
    ProcessingLock.objects.create(key="payout-cycle:8", holder="bob", acquired_at=now, expires_at=now + timedelta(1))
    with committed():
        assert locks_stale_check() == 1
        assert locks_stale_check() == 1
    alert = the_alert("lock:payout-cycle:7")
    assert (alert.occurrences, alert.severity) == (2, Alert.Severity.WARNING) and "alice" in alert.title
    assert not Alert.objects.filter(key="lock:payout-cycle:8").exists()
    assert len(emails_about(mailoutbox, alert.key)) == 1

    lock_release_by_staff(lock_pk=lock.pk, actor=approver)
    assert resolved_by_the_system(alert)
    assert AuditLog.objects.filter(action="core.lock.release", actor=approver).count() == 1


def test_a_stale_lock_taken_over_resolves_its_alert(approver):
    now = timezone.now()
    ProcessingLock.objects.create(key="escrow-deal:9", holder="worker-1", acquired_at=now - timedelta(hours=1),
                                  expires_at=now - timedelta(minutes=45))  # fmt: skip
    locks_stale_check()
    alert = the_alert("lock:escrow-deal:9")
    with processing_lock(key="escrow-deal:9", holder="worker-2"):  # the expired lease is free to take
        assert resolved_by_the_system(alert)
    assert locks_stale_check() == 0 and the_alert("lock:escrow-deal:9").status == Alert.Status.RESOLVED


def test_a_stale_lock_that_went_away_resolves_at_the_next_check(approver):
    now = timezone.now()
    ProcessingLock.objects.create(
        key="reconciliation:stripe:2026-01-01", holder="reconciliation (schedule)",
        acquired_at=now - timedelta(hours=1), expires_at=now - timedelta(minutes=45),
    )  # fmt: skip
    locks_stale_check()
    alert = the_alert("lock:reconciliation:stripe:2026-01-01")
    ProcessingLock.objects.all().delete()  # released outside the services, say by hand in a database shell
    assert locks_stale_check() == 0
    assert resolved_by_the_system(alert)
