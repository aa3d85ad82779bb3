"""Daily reconciliation against the Stripe sandbox over real HTTP: a seeded day, reruns, staff actions, the command."""

import io
import threading
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from django.contrib.auth.models import Permission
from django.core.management import CommandError, call_command
from django.db import connections
from django.utils import timezone

from core.errors import (
    InvalidRequest,
    InvalidStateTransition,
    PermissionDenied,
    ProviderUnavailable,
    ResourceLocked,
)
from core.locks import processing_lock
from core.models import Alert, AuditLog
from core.money import Money
from ledger.integrity import ledger_integrity_report
from ledger.services import credit, debit, transaction_post
from monitoring.models import ReconciliationIssue, ReconciliationProviderRow, ReconciliationRun
from monitoring.reconciliation import issue_assign, issue_reopen, issue_resolve, reconciliation_run
from monitoring.tasks import reconcile_yesterday_task
from payouts.models import PayoutCycle, WinnerSelection
from payouts.services import cycle_disburse, winnings_fund
from providers.models import Payment, Refund
from providers.payments import payment_initiate, refund_request
from providers.routing import Choice
from providers.sandbox import stripe as stripe_sandbox
from providers.sandbox.server import Fault
from providers.stripe.client import StripeProviderClient
from tests.providers.conftest import default_payment_config  # noqa: F401 - the seeded fee rules

CARD = Choice("stripe", "card")
CLEARING = "provider:stripe:clearing:USD"
OWED = "platform:customer-payments:USD"
Kind, Status = ReconciliationIssue.Kind, ReconciliationIssue.Status


pytestmark = pytest.mark.usefixtures("default_payment_config")


@pytest.fixture(autouse=True)
def _isolated(settings):
    settings.PROVIDER_STATE_KEY_PREFIX = f"test:reconciliation:{uuid.uuid4().hex}"
    settings.PROVIDER_RETRY_ATTEMPTS = 1


def staff(django_user_model, name: str, *codenames: str):
    user = django_user_model.objects.create_user(f"{name}-{uuid.uuid4().hex[:6]}", is_staff=True)
    user.user_permissions.set(Permission.objects.filter(codename__in=codenames))
    return django_user_model.objects.get(pk=user.pk)


@pytest.fixture
def finance(django_user_model):
    return staff(django_user_model, "finance", "add_refund", "run_reconciliation", "resolve_reconciliationissue")


@pytest.fixture
def buyer(django_user_model):
    return django_user_model.objects.create_user(f"buyer-{uuid.uuid4().hex[:6]}")


def pay(buyer, amount_minor: int, key: str) -> Payment:
    payment = payment_initiate(
        user=buyer, amount=Money(amount_minor, "USD"), client_key=key, explicit=CARD,
        payment_method_token="pm_card_visa",
    )  # fmt: skip
    assert payment.status == Payment.Status.SUCCEEDED
    return payment


def today():
    return timezone.now().date()


def issues_by_reference(run: ReconciliationRun) -> dict[str, ReconciliationIssue]:
    found = list(ReconciliationIssue.objects.filter(last_seen_run=run))
    assert len(found) == len({i.provider_reference for i in found}), "one issue per reference"
    return {i.provider_reference: i for i in found}


def stripe_payout(django_user_model, operator, amount_minor: int) -> str:
    cycle = PayoutCycle.objects.create(name=f"cycle-{uuid.uuid4().hex[:6]}")
    WinnerSelection.objects.create(
        cycle=cycle, user=django_user_model.objects.create_user(f"seller-{uuid.uuid4().hex[:6]}"),
        amount_minor=amount_minor, currency="USD", recipient_type="STRIPE_ACCOUNT", recipient="acct_1SellerXYZ",
    )  # fmt: skip
    winnings_fund(amount=Money(amount_minor, "USD"), reference=f"pool-{cycle.pk}")
    (batch,) = cycle_disburse(cycle_id=cycle.pk, actor=operator)
    (item,) = batch.items.all()
    assert item.status == "SUCCESS"
    return item.provider_item_id


@pytest.fixture
def seeded_day(sandbox, buyer, finance, django_user_model, monkeypatch):
    """A day of real Stripe movements through our services, plus one deliberate mismatch of each kind."""
    refs: dict[str, str] = {}
    refs["matched_payment"] = pay(buyer, 10_000, "a").provider_reference
    refunded = pay(buyer, 20_000, "b")
    refs["refunded_payment"] = refunded.provider_reference
    refund = refund_request(reference=refunded.reference, amount=Money(5_000, "USD"), client_key="r1", actor=finance)
    refs["refund"] = refund.provider_reference
    operator = staff(django_user_model, "operator", "prepare_payoutbatch", "approve_payoutbatch", "execute_payoutbatch")
    refs["payout_transfer"] = stripe_payout(django_user_model, operator, 7_500)

    # Stripe charged another fee than the one we booked (2.9% + 30): the clearing account drifts.
    monkeypatch.setitem(stripe_sandbox.CARD_FEES, "usd", (300, 30))
    refs["fee_drift"] = pay(buyer, 30_000, "c").provider_reference
    monkeypatch.undo()
    # A posting repeated under another key.
    doubled = pay(buyer, 40_000, "d")
    refs["duplicate"] = doubled.provider_reference
    transaction_post(
        idempotency_key="seed:double-post", kind="customer_payment",
        legs=[debit(CLEARING, Money(40_000, "USD")), credit(OWED, Money(40_000, "USD"))],
        metadata={"provider": "stripe", "provider_reference": doubled.provider_reference},
    )  # fmt: skip
    # A refund Stripe made whose row says it failed.
    status_paid = pay(buyer, 50_000, "e")
    refs["status_payment"] = status_paid.provider_reference
    bad = refund_request(reference=status_paid.reference, amount=Money(10_000, "USD"), client_key="r2", actor=finance)
    Refund.objects.filter(pk=bad.pk).update(status=Refund.Status.FAILED)
    refs["status"] = bad.provider_reference
    # A posting for money Stripe never moved.
    refs["ghost"] = "pi_ghostNeverAtStripe"
    transaction_post(
        idempotency_key="seed:ghost", kind="customer_payment",
        legs=[debit(CLEARING, Money(1_234, "USD")), credit(OWED, Money(1_234, "USD"))],
        metadata={"provider": "stripe", "provider_reference": refs["ghost"]},
    )  # fmt: skip
    with StripeProviderClient() as client:
        # Money Stripe moved that nobody posted: a transfer made outside our services.
        refs["unposted"] = client.create_transfer(
            amount_minor=777, currency="USD", destination="acct_1Other", idempotency_key="seed:unposted"
        ).reference
        # Posted and at Stripe, but no record of ours names it.
        refs["unrecorded"] = client.create_payment_intent(
            amount_minor=8_000, currency="USD", payment_method="pm_card_visa", idempotency_key="seed:unrecorded",
            capture="automatic",
        ).reference  # fmt: skip
    transaction_post(
        idempotency_key="seed:unrecorded", kind="customer_payment",
        legs=[debit(CLEARING, Money(8_000 - 262, "USD")), credit(OWED, Money(8_000 - 262, "USD"))],
        metadata={"provider": "stripe", "provider_reference": refs["unrecorded"]},
    )  # fmt: skip
    # Stripe reports each movement on the day; pin them to noon so the day is deterministic.
    noon = int(datetime.combine(today(), datetime.min.time(), tzinfo=UTC).timestamp()) + 12 * 3600
    for txn_id in list(stripe_sandbox.state_of(sandbox).balance_transactions):
        stripe_sandbox.balance_transaction_set_created(sandbox, txn_id, noon)
    return refs


@pytest.mark.django_db
def test_a_seeded_day_finds_each_mismatch_once_with_its_kind_and_amounts(seeded_day, sandbox, finance):
    refs = seeded_day
    run = reconciliation_run(day=today(), provider="stripe", trigger="command", actor=finance)

    assert run.status == ReconciliationRun.Status.SUCCEEDED
    assert sandbox.calls["stripe.balance_transactions.list"] == 1
    assert run.provider_rows == 10  # 6 charges, 2 refunds, 2 transfers
    found = issues_by_reference(run)
    assert {ref: i.kind for ref, i in found.items()} == {
        refs["ghost"]: Kind.MISSING_AT_PROVIDER,
        refs["unposted"]: Kind.MISSING_IN_LEDGER,
        refs["fee_drift"]: Kind.AMOUNT_MISMATCH,
        refs["duplicate"]: Kind.DUPLICATE,
        refs["status"]: Kind.STATUS_MISMATCH,
        refs["unrecorded"]: Kind.MISSING_IN_RECORDS,
    }
    money = {ref: (i.ledger_amount_minor, i.provider_amount_minor, i.record_amount_minor) for ref, i in found.items()}
    assert money[refs["ghost"]] == (1_234, None, None)
    assert money[refs["unposted"]] == (None, -777, None)
    assert money[refs["fee_drift"]] == (30_000 - 900, 30_000 - 930, 30_000)  # our fee 900, Stripe's 930
    assert found[refs["fee_drift"]].provider_fee_minor == 930
    assert money[refs["duplicate"]] == (40_000 - 1_190 + 40_000, 40_000 - 1_190, 40_000)
    assert found[refs["duplicate"]].ledger_postings == 2
    assert money[refs["status"]] == (-10_000, -10_000, -10_000)
    assert found[refs["status"]].record_status == "failed"
    assert money[refs["unrecorded"]] == (7_738, 7_738, None)
    assert run.matched_count == 5  # two payments, the refund, the payout transfer, the status payment
    assert run.issue_count == run.new_issue_count == 6
    assert run.summary["by_kind"]["amount_mismatch"]["USD"] == {
        "count": 1, "ledger_minor": 29_100, "provider_minor": 29_070, "record_minor": 30_000,
    }  # fmt: skip
    assert not ReconciliationProviderRow.objects.exists()  # staging is emptied
    assert Alert.objects.get(key=f"reconciliation:stripe:{today()}").status == Alert.Status.OPEN
    assert AuditLog.objects.filter(action="monitoring.reconciliation.run", actor=finance).count() == 1
    assert ledger_integrity_report().is_clean  # reading changed nothing


@pytest.mark.django_db
def test_a_rerun_reports_nothing_twice_and_closes_what_was_fixed(seeded_day, sandbox):
    first = reconciliation_run(day=today(), provider="stripe", trigger="schedule")
    second = reconciliation_run(day=today(), provider="stripe", trigger="schedule")
    assert (second.issue_count, second.new_issue_count, second.fixed_issue_count) == (6, 0, 0)
    assert ReconciliationIssue.objects.count() == 6
    assert set(ReconciliationIssue.objects.values_list("run", flat=True)) == {first.pk}

    Refund.objects.filter(provider_reference=seeded_day["status"]).update(status=Refund.Status.SUCCEEDED)
    third = reconciliation_run(day=today(), provider="stripe", trigger="schedule")
    assert (third.issue_count, third.new_issue_count, third.fixed_issue_count) == (5, 0, 1)
    fixed = ReconciliationIssue.objects.get(provider_reference=seeded_day["status"])
    assert fixed.status == Status.FIXED
    assert third.summary["issues_by_status"] == {"open": 5, "resolved": 0, "fixed": 1}
    assert ReconciliationIssue.objects.filter(status=Status.OPEN).count() == 5


@pytest.mark.django_db
def test_the_day_is_the_providers_created_time_and_the_ledgers_event_time(sandbox, buyer):
    payment = pay(buyer, 10_000, "x")
    (txn_id,) = stripe_sandbox.state_of(sandbox).balance_transactions
    yesterday_noon = int((timezone.now() - timedelta(days=1)).timestamp())
    stripe_sandbox.balance_transaction_set_created(sandbox, txn_id, yesterday_noon)

    run = reconciliation_run(day=today(), provider="stripe", trigger="command")
    (issue,) = ReconciliationIssue.objects.filter(last_seen_run=run)
    assert (issue.kind, issue.provider_reference, issue.ledger_amount_minor) == (
        Kind.MISSING_AT_PROVIDER, payment.provider_reference, 10_000 - 320,
    )  # fmt: skip
    day_before = reconciliation_run(day=today() - timedelta(days=1), provider="stripe", trigger="command")
    (issue,) = ReconciliationIssue.objects.filter(last_seen_run=day_before)
    assert (issue.kind, issue.provider_amount_minor) == (Kind.MISSING_IN_LEDGER, 10_000 - 320)


@pytest.mark.django_db
def test_staff_assign_resolve_and_reopen_with_permissions_and_audit(seeded_day, finance, django_user_model):
    run = reconciliation_run(day=today(), provider="stripe", trigger="schedule")
    issue = ReconciliationIssue.objects.get(last_seen_run=run, provider_reference=seeded_day["ghost"])
    viewer = staff(django_user_model, "viewer", "view_reconciliationissue")
    colleague = staff(django_user_model, "colleague", "resolve_reconciliationissue")

    with pytest.raises(PermissionDenied):
        issue_resolve(issue_id=issue.pk, actor=viewer, note="looks fine")
    with pytest.raises(PermissionDenied):
        reconciliation_run(day=today(), provider="stripe", trigger="admin", actor=viewer)
    with pytest.raises(InvalidRequest):
        issue_assign(issue_id=issue.pk, actor=finance, assignee_id=django_user_model.objects.create_user("cust").pk)
    assert issue_assign(issue_id=issue.pk, actor=finance, assignee_id=finance.pk).assignee_id == finance.pk
    assert issue_assign(issue_id=issue.pk, actor=finance, assignee_id=colleague.pk).assignee_id == colleague.pk
    with pytest.raises(InvalidRequest):
        issue_resolve(issue_id=issue.pk, actor=colleague, note="  ")
    resolved = issue_resolve(issue_id=issue.pk, actor=colleague, note="Test posting; reversed in the ledger.")
    assert (resolved.status, resolved.resolved_by_id) == (Status.RESOLVED, colleague.pk)
    with pytest.raises(InvalidStateTransition):
        issue_resolve(issue_id=issue.pk, actor=colleague, note="again")

    rerun = reconciliation_run(day=today(), provider="stripe", trigger="schedule")  # still there: stays resolved
    issue.refresh_from_db()
    assert (issue.status, issue.last_seen_run_id, rerun.new_issue_count) == (Status.RESOLVED, rerun.pk, 0)
    assert issue_reopen(issue_id=issue.pk, actor=finance, note="not reversed after all").status == Status.OPEN

    actions = list(AuditLog.objects.filter(object_id=str(issue.pk)).order_by("id").values_list("action", "actor"))
    assert actions == [
        ("monitoring.reconciliation_issue.assign", finance.pk),
        ("monitoring.reconciliation_issue.assign", finance.pk),
        ("monitoring.reconciliation_issue.resolve", colleague.pk),
        ("monitoring.reconciliation_issue.reopen", finance.pk),
    ]


@pytest.mark.django_db
def test_the_command_prints_the_summary_and_exits_by_what_it_found(seeded_day, sandbox):
    out = io.StringIO()
    with pytest.raises(CommandError) as failed:
        call_command("reconcile_daily", "--date", today().isoformat(), "--provider", "stripe", stdout=out)
    assert failed.value.returncode == 1
    text = out.getvalue()
    assert "matched=5 issues=6 (new 6" in text
    assert f"OPEN missing_at_provider {seeded_day['ghost']} USD" in text
    assert "amount_mismatch: 1 USD ledger=29100 provider=29070 records=30000" in text

    with pytest.raises(CommandError) as bad_date:
        call_command("reconcile_daily", "--date", "2026-02-30")
    assert "YYYY-MM-DD" in str(bad_date.value)
    with pytest.raises(CommandError) as future:
        call_command("reconcile_daily", "--date", (today() + timedelta(days=2)).isoformat())
    assert future.value.returncode == 2 and "has not happened yet" in str(future.value)


@pytest.mark.django_db
def test_a_clean_day_exits_zero_and_the_nightly_task_covers_yesterday(sandbox, buyer):
    pay(buyer, 10_000, "clean")
    out = io.StringIO()
    call_command("reconcile_daily", "--date", today().isoformat(), stdout=out)
    assert "matched=1 issues=0" in out.getvalue() and "OK:" in out.getvalue()
    runs = reconcile_yesterday_task()
    run = ReconciliationRun.objects.get(pk=runs["stripe"])
    assert (run.date, run.trigger, run.status) == (today() - timedelta(days=1), "schedule", "succeeded")


@pytest.mark.django_db
def test_a_day_being_reconciled_is_locked_and_a_failed_read_marks_the_run_failed(sandbox):
    with processing_lock(key=f"reconciliation:stripe:{today()}", holder="someone"):
        with pytest.raises(ResourceLocked):
            reconciliation_run(day=today(), provider="stripe", trigger="schedule")
    sandbox.add_fault(Fault(operation="stripe.balance_transactions.list", kind="error", status=500))
    with pytest.raises(ProviderUnavailable):
        reconciliation_run(day=today(), provider="stripe", trigger="schedule")
    run = ReconciliationRun.objects.get()
    assert run.status == ReconciliationRun.Status.FAILED and "balance transactions" in run.error


@pytest.mark.django_db
def test_the_client_pages_through_the_day_newest_first(sandbox):
    start = int(datetime.combine(today(), datetime.min.time(), tzinfo=UTC).timestamp())
    for n in range(250):
        stripe_sandbox.balance_transaction_add(
            sandbox, type_="adjustment", source=f"adj_{n}", amount=n + 1, currency="usd", created=start + n
        )
    stripe_sandbox.balance_transaction_add(
        sandbox, type_="adjustment", source="adj_next_day", amount=1, currency="usd", created=start + 86_400
    )
    with StripeProviderClient() as client:
        pages = list(client.balance_transaction_pages(created_gte=start, created_lt=start + 86_400))
    assert [len(page) for page in pages] == [100, 100, 50]
    assert sandbox.calls["stripe.balance_transactions.list"] == 3
    references = [m.reference for page in pages for m in page]
    assert references == [f"adj_{n}" for n in reversed(range(250))]
    assert pages[0][0].currency == "USD" and pages[0][0].net_minor == 250


@pytest.mark.django_db(transaction=True)
def test_two_runs_of_one_day_at_once_one_waits_its_turn_and_nothing_is_reported_twice(sandbox, buyer):
    paid = pay(buyer, 10_000, "race")
    transaction_post(
        idempotency_key="seed:race-ghost", kind="customer_payment",
        legs=[debit(CLEARING, Money(999, "USD")), credit(OWED, Money(999, "USD"))],
        metadata={"provider": "stripe", "provider_reference": "pi_raceGhost"},
    )  # fmt: skip
    stripe_sandbox.state_of(sandbox).processing_delay_seconds = 0.5  # the first run holds the day meanwhile
    barrier, outcomes = threading.Barrier(2), []

    def run() -> None:
        barrier.wait()
        try:
            outcomes.append(reconciliation_run(day=today(), provider="stripe", trigger="schedule").status)
        except ResourceLocked as locked:
            outcomes.append(locked.code)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=run) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert sorted(outcomes) == ["resource_locked", "succeeded"]
    (issue,) = ReconciliationIssue.objects.all()
    assert (issue.kind, issue.provider_reference, issue.ledger_amount_minor) == ("missing_at_provider",
                                                                                 "pi_raceGhost", 999)  # fmt: skip
    assert ReconciliationRun.objects.get().matched_count == 1  # the real payment
    assert Payment.objects.get(pk=paid.pk).status == Payment.Status.SUCCEEDED
    assert ledger_integrity_report().is_clean
