"""Escrow deals on the money-moving protocol, with the sandbox's fault injection over real HTTP:

- unknown is sticky: a capture or refund whose answer was lost stays `releasing` / `refunding` however the
  next look (the sweeper's look-up, and any re-send) is refused, never `held`; the sweeper then finds it
  done and finishes the deal with exactly one capture (or refund) and one transfer at the sandbox;
- a process that died after Stripe answered and before our commit is found by the sweeper once the
  movement's next_sync_at has passed (time moved on the row, no sleeps);
- only a step KNOWN not done returns the deal to `held`, and the next try is a new attempt under a new key;
  a deal whose refund failed can be refunded again;
- transfer retries after a known decline keep the 1 h, 2 h, 4 h... schedule, each under a new key;
- the timeout job skips (and alerts on, once) a deal above its per-run amount limit, and carries on;
- the maker-checker check of a release approval reads the deal under its row lock.
"""

from __future__ import annotations

import socket
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta

import pytest
from django.db import connection, connections, transaction
from django.test import override_settings
from django.utils import timezone

from core.errors import Conflict, ProviderUnavailable
from core.models import Alert
from escrow.deals import (
    DealMakerCheckerViolation,
    deal_cancel,
    deal_release,
    deal_release_approve,
    deal_timeouts_run,
    deal_transfers_retry_due,
)
from escrow.deals.cancel import refund_begin
from escrow.deals.release import release_begin, release_split
from escrow.models import EscrowDeal
from ledger.integrity import ledger_integrity_report
from ledger.models import Transaction
from providers.base import Succeeded, Unknown
from providers.breaker import breaker_for, shared_redis
from providers.models import MoneyMovement
from providers.protocol import SYNC_SCHEDULE, engine, movement_latest, movements_sweep, operation_get
from providers.sandbox import stripe as stripe_sandbox
from providers.sandbox.server import Fault, Sandbox
from tests.escrow.factories_deals import (
    UserFactory,
    escrow_balances,
    held_deal,
    overdue,
    seller,
    staff,
    usd_card_fee,
)

Status = EscrowDeal.Status
Movement = MoneyMovement.Status
CAPTURED_MODE = timedelta(days=10)  # a deadline this far out is captured into escrow at once


@pytest.fixture(autouse=True)
def _isolated(settings):
    prefix = settings.PROVIDER_STATE_KEY_PREFIX = f"test:escrow-protocol:{uuid.uuid4().hex}"
    settings.PROVIDER_RETRY_ATTEMPTS = 1  # every call counted at the sandbox is one we made
    yield
    client = shared_redis()
    for key in client.scan_iter(f"{prefix}:*") if client else []:
        client.delete(key)


# --- moving time and refusing ----------------------------------------------------------------------------


def latest(deal: EscrowDeal, operation: str) -> MoneyMovement:
    movement = movement_latest(operation=operation, subject_id=deal.pk)
    assert movement is not None, f"no {operation} for deal {deal.pk}"
    return movement


def next_look(deal: EscrowDeal, operation: str) -> MoneyMovement:
    """The clock reaches the movement's next_sync_at (and any claim on it lapses); the sweeper runs once."""
    movement = latest(deal, operation)
    past = timezone.now() - timedelta(seconds=1)
    MoneyMovement.objects.filter(pk=movement.pk).update(next_sync_at=past, claimed_until=None)
    assert movements_sweep() >= 1
    return MoneyMovement.objects.get(pk=movement.pk)


def _stripe_error(status: int, type_: str, code: str, message: str, **headers: str) -> dict[str, object]:
    body = {"error": {"type": type_, "code": code, "message": message}}
    return {"kind": "error", "status": status, "body": body, "headers": headers or None}


REFUSALS: dict[str, dict[str, object]] = {  # how Stripe (or the way to it) refuses a call, as Fault arguments
    "http_429": _stripe_error(429, "invalid_request_error", "rate_limit", "Too many requests", **{"Retry-After": "0"}),
    "http_500": _stripe_error(500, "api_error", "", "An unknown error occurred"),
    "http_503": _stripe_error(503, "api_error", "", "Service unavailable"),
    "decline": _stripe_error(402, "card_error", "card_declined", "Your card was declined."),
    "unexpected_state": _stripe_error(
        400, "invalid_request_error", "payment_intent_unexpected_state", "This PaymentIntent has been captured."
    ),
    "already_refunded": _stripe_error(
        400, "invalid_request_error", "charge_already_refunded", "Charge has already been refunded."
    ),
    "idempotency_error": _stripe_error(400, "idempotency_error", "", "Keys can only be used with the same request."),
    "reset": {"kind": "reset"},
    "timeout": {"kind": "timeout"},
    "circuit_open": {},  # not the sandbox: our breaker refuses before sending
    "connection_refused": {},  # not the sandbox: nothing listens where we call
}


def refusal_fault(refusal: str, operation: str = "stripe.*", times: int | None = None) -> Fault:
    return Fault(operation=operation, times=times, **REFUSALS[refusal])  # type: ignore[arg-type]


@contextmanager
def _circuit_open() -> Iterator[None]:
    breaker = breaker_for("stripe")
    for _ in range(50):
        breaker.record(Unknown(reason="forced open by the test"))
    assert breaker.is_refusing()
    try:
        yield
    finally:
        breaker.reset()


@contextmanager
def _connections_refused() -> Iterator[None]:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with override_settings(SANDBOX_URL=f"http://127.0.0.1:{port}"):
        yield


@contextmanager
def stripe_refuses(sandbox: Sandbox, refusal: str) -> Iterator[None]:
    """Every Stripe call (look-ups and any re-send) is refused this way while inside."""
    if refusal == "circuit_open":
        with _circuit_open():
            yield
        return
    if refusal == "connection_refused":
        with _connections_refused():
            yield
        return
    sandbox.add_fault(refusal_fault(refusal))
    try:
        yield
    finally:
        sandbox.clear_faults()


def captures_at_stripe(sandbox: Sandbox, deal: EscrowDeal) -> int:
    """Money taken from the card: balance transactions of the PaymentIntent's charge."""
    state = stripe_sandbox.state_of(sandbox)
    charge = state.payment_intents[deal.payment_intent_id]["latest_charge"]
    return sum(1 for txn in state.balance_transactions.values() if txn["source"] == charge and txn["type"] == "charge")


def transfers_at_stripe(sandbox: Sandbox, deal: EscrowDeal) -> list[dict]:
    return [
        t for t in stripe_sandbox.state_of(sandbox).transfers.values() if t["transfer_group"] == deal.transfer_group
    ]


def refunds_at_stripe(sandbox: Sandbox, deal: EscrowDeal, status: str = "succeeded") -> list[dict]:
    refunds = stripe_sandbox.state_of(sandbox).refunds.values()
    return [r for r in refunds if r["payment_intent"] == deal.payment_intent_id and r["status"] == status]


def postings(deal: EscrowDeal) -> list[str]:
    keys = Transaction.objects.filter(idempotency_key__startswith=f"escrow:{deal.pk}:").values_list(
        "idempotency_key", flat=True
    )
    return sorted(key.split(":", 2)[2] for key in keys)


# --- unknown is sticky --------------------------------------------------------------------------------------


@pytest.mark.django_db
@pytest.mark.parametrize(
    "refusal",
    ["http_429", "http_500", "http_503", "decline", "unexpected_state", "idempotency_error", "reset", "timeout",
     "circuit_open", "connection_refused"],
)  # fmt: skip
def test_a_lost_capture_stays_releasing_whatever_refuses_the_next_look_and_the_sweeper_finishes_it(sandbox, refusal):
    buyer, account = UserFactory(), seller(sandbox, rate_bps=800)
    deal = held_deal(buyer, account, amount_minor=10_000)
    sandbox.add_fault(Fault(operation="stripe.payment_intents.capture", kind="applied_then_timeout"))

    deal = deal_release(deal_id=deal.pk, actor=buyer)  # Stripe captured; we never heard
    assert deal.status == Status.RELEASING and "unknown" in deal.failure_reason
    assert latest(deal, "escrow.capture").status == Movement.UNKNOWN

    with stripe_refuses(sandbox, refusal):
        capture = next_look(deal, "escrow.capture")
    deal.refresh_from_db()
    assert (deal.status, capture.status) == (Status.RELEASING, Movement.UNKNOWN)  # never held
    # Looked at again on schedule; a look our own open circuit refused was not made and spends no step.
    assert capture.next_sync_at is not None and capture.sync_attempts == (1 if refusal == "circuit_open" else 2)
    assert escrow_balances()["clearing"] == 0 and "capture" not in postings(deal)

    assert next_look(deal, "escrow.capture").status == Movement.SUCCEEDED  # found captured
    deal.refresh_from_db()
    assert deal.status == Status.TRANSFERRED
    assert sandbox.calls["stripe.payment_intents.capture"] == 1  # never sent again
    assert captures_at_stripe(sandbox, deal) == 1 and len(transfers_at_stripe(sandbox, deal)) == 1
    fee = usd_card_fee(10_000)
    assert escrow_balances() == {
        "authorized": 0, "held": 0, "payable": 0, "commission": 800, "clearing": 800 - fee, "fees": fee,
    }  # fmt: skip
    assert postings(deal) == ["authorize", "capture", "release", "transfer"]
    assert ledger_integrity_report().is_clean


@pytest.mark.django_db
@pytest.mark.parametrize("refusal", ["http_429", "http_500", "already_refunded", "idempotency_error", "reset",
                                     "circuit_open"])  # fmt: skip
def test_a_lost_refund_stays_refunding_whatever_refuses_the_next_look_and_the_sweeper_finishes_it(sandbox, refusal):
    account = seller(sandbox)
    deal = held_deal(UserFactory(), account, amount_minor=25_000, deadline_in=CAPTURED_MODE)
    assert deal.captured
    sandbox.add_fault(Fault(operation="stripe.refunds.create", kind="applied_then_timeout"))

    deal = deal_cancel(deal_id=deal.pk, actor=account.user)
    assert deal.status == Status.REFUNDING and latest(deal, "escrow.refund").status == Movement.UNKNOWN

    with stripe_refuses(sandbox, refusal):
        refund = next_look(deal, "escrow.refund")
    deal.refresh_from_db()
    assert (deal.status, refund.status) == (Status.REFUNDING, Movement.UNKNOWN)  # never held
    assert "refund" not in postings(deal)

    assert next_look(deal, "escrow.refund").status == Movement.SUCCEEDED
    deal.refresh_from_db()
    (made,) = refunds_at_stripe(sandbox, deal)
    assert (deal.status, deal.refund_id, made["amount"]) == (Status.REFUNDED, made["id"], 25_000)
    assert sandbox.calls["stripe.refunds.create"] == 1
    assert escrow_balances()["held"] == 0 and postings(deal) == ["capture", "refund"]
    assert ledger_integrity_report().is_clean


@pytest.mark.django_db
def test_a_capture_nobody_can_find_out_about_ends_in_one_staff_alert_and_stays_releasing(sandbox):
    buyer = UserFactory()
    deal = held_deal(buyer, seller(sandbox), amount_minor=10_000)
    sandbox.add_fault(Fault(operation="stripe.payment_intents.capture", kind="applied_then_timeout"))
    deal = deal_release(deal_id=deal.pk, actor=buyer)
    with stripe_refuses(sandbox, "http_503"):
        for _ in SYNC_SCHEDULE:
            breaker_for("stripe").reset()  # every look reaches Stripe (one our open circuit refused spends no step)
            capture = next_look(deal, "escrow.capture")
    deal.refresh_from_db()
    assert (deal.status, capture.status, capture.next_sync_at) == (Status.RELEASING, Movement.UNKNOWN, None)
    alert = Alert.objects.get(key=f"movement:{capture.key}", status=Alert.Status.OPEN)
    assert alert.severity == Alert.Severity.CRITICAL and f"escrow-{deal.pk}" in alert.action_required


# --- the process died after Stripe answered, before our commit -----------------------------------------------


def _intent_capture(deal: EscrowDeal) -> MoneyMovement:
    EscrowDeal.status_move(deal.pk, Status.RELEASING, sources=[Status.HELD])
    return release_begin(deal.pk)


def _intent_refund(deal: EscrowDeal) -> MoneyMovement:
    EscrowDeal.status_move(deal.pk, Status.REFUNDING, sources=[Status.HELD])
    return refund_begin(deal.pk)


def _intent_transfer(deal: EscrowDeal) -> MoneyMovement:
    EscrowDeal.status_move(deal.pk, Status.RELEASING, sources=[Status.HELD])
    return release_split(EscrowDeal.objects.select_related("seller_account").get(pk=deal.pk))


DIED_AFTER = {  # operation: (deadline, how its intent is recorded, the deal's state once the sweeper finished)
    "escrow.capture": (timedelta(days=2), _intent_capture, Status.TRANSFERRED),
    "escrow.refund": (CAPTURED_MODE, _intent_refund, Status.REFUNDED),
    "escrow.transfer": (CAPTURED_MODE, _intent_transfer, Status.TRANSFERRED),
}


@pytest.mark.django_db
@pytest.mark.parametrize("operation", sorted(DIED_AFTER))
def test_a_movement_whose_worker_died_after_stripe_answered_is_found_by_the_sweeper(sandbox, operation):
    deadline_in, record_intent, finished = DIED_AFTER[operation]
    deal = held_deal(UserFactory(), seller(sandbox, rate_bps=800), amount_minor=10_000, deadline_in=deadline_in)
    with transaction.atomic():  # the service's transaction: the deal's move and the intent, together
        movement = record_intent(deal)
    claimed = engine._claim(movement.pk, first=True, force=False)  # the worker claims it, as movement_run does
    assert isinstance(operation_get(operation).send(claimed), Succeeded)  # Stripe did it; the worker died here

    assert MoneyMovement.objects.get(pk=movement.pk).status == Movement.PENDING
    assert movements_sweep() == 0  # not due: the worker's claim and next_sync_at are still ahead
    assert next_look(deal, operation).status == Movement.SUCCEEDED  # found by its look-up, not sent again
    deal.refresh_from_db()
    assert deal.status == finished
    calls = sandbox.calls
    assert calls["stripe.payment_intents.capture"] == (1 if operation == "escrow.capture" else 0)
    assert calls["stripe.refunds.create"] == (1 if operation == "escrow.refund" else 0)
    assert calls["stripe.transfers.create"] == (0 if operation == "escrow.refund" else 1)
    if finished == Status.TRANSFERRED:
        assert len(transfers_at_stripe(sandbox, deal)) == 1 and escrow_balances()["payable"] == 0
    else:
        assert len(refunds_at_stripe(sandbox, deal)) == 1 and escrow_balances()["held"] == 0
    assert ledger_integrity_report().is_clean


# --- known not done: held again, and a new attempt under a new key --------------------------------------------


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("refusal", "error"), [("decline", Conflict), ("http_429", ProviderUnavailable)], ids=["declined", "rate_limited"]
)
def test_a_capture_refused_on_its_first_send_holds_the_deal_again_and_the_next_release_uses_a_new_key(
    sandbox, refusal, error
):
    buyer = UserFactory()
    deal = held_deal(buyer, seller(sandbox), amount_minor=10_000)
    sandbox.add_fault(refusal_fault(refusal, "stripe.payment_intents.capture", times=1))
    with pytest.raises(error):
        deal_release(deal_id=deal.pk, actor=buyer)
    deal.refresh_from_db()
    assert deal.status == Status.HELD and deal.failure_reason.startswith("capture")
    assert latest(deal, "escrow.capture").status == Movement.DECLINED

    deal = deal_release(deal_id=deal.pk, actor=buyer)

    assert deal.status == Status.TRANSFERRED
    keys = MoneyMovement.objects.filter(operation="escrow.capture", subject_id=deal.pk).order_by("id")
    assert list(keys.values_list("key", "status")) == [
        (f"escrow:{deal.pk}:capture", Movement.DECLINED),
        (f"escrow:{deal.pk}:capture:2", Movement.SUCCEEDED),
    ]
    assert captures_at_stripe(sandbox, deal) == 1 and ledger_integrity_report().is_clean


@pytest.mark.django_db
def test_a_refund_refused_on_its_first_send_can_be_asked_again(sandbox):
    account = seller(sandbox)
    deal = held_deal(UserFactory(), account, amount_minor=8_000, deadline_in=CAPTURED_MODE)
    refused = _stripe_error(402, "invalid_request_error", "insufficient_funds", "Your Stripe balance is too low.")
    sandbox.add_fault(Fault(operation="stripe.refunds.create", **refused))  # type: ignore[arg-type]
    with pytest.raises(Conflict):
        deal_cancel(deal_id=deal.pk, actor=account.user)
    deal.refresh_from_db()
    assert deal.status == Status.HELD and "declined" in deal.failure_reason

    deal = deal_cancel(deal_id=deal.pk, actor=account.user)

    (made,) = refunds_at_stripe(sandbox, deal)
    assert (deal.status, deal.refund_id) == (Status.REFUNDED, made["id"])
    assert made["metadata"]["idempotency_key"] == f"escrow:{deal.pk}:refund:2"
    assert escrow_balances()["held"] == 0 and ledger_integrity_report().is_clean


@pytest.mark.django_db
def test_a_deal_whose_refund_failed_at_stripe_can_be_refunded_again(sandbox):
    account = seller(sandbox)
    deal = held_deal(UserFactory(), account, amount_minor=8_000, deadline_in=CAPTURED_MODE)
    sandbox.add_fault(Fault(operation="stripe.refunds.create", kind="applied_then_timeout"))
    deal = deal_cancel(deal_id=deal.pk, actor=account.user)
    assert deal.status == Status.REFUNDING
    (first,) = refunds_at_stripe(sandbox, deal)
    state = stripe_sandbox.state_of(sandbox)  # later the refund fails at Stripe; the money is back with us
    first.update(status="failed", failure_reason="expired_or_canceled_card")
    state.charges[state.payment_intents[deal.payment_intent_id]["latest_charge"]]["amount_refunded"] = 0

    assert next_look(deal, "escrow.refund").status == Movement.DECLINED  # the look-up: known not done
    deal.refresh_from_db()
    assert (deal.status, deal.refund_id) == (Status.HELD, "") and "refund" not in postings(deal)

    deal = deal_cancel(deal_id=deal.pk, actor=account.user)  # a new attempt under a new key

    (second,) = refunds_at_stripe(sandbox, deal)
    assert (deal.status, deal.refund_id) == (Status.REFUNDED, second["id"]) and second["id"] != first["id"]
    assert second["metadata"]["idempotency_key"] == f"escrow:{deal.pk}:refund:2"
    assert (
        Transaction.objects.get(idempotency_key=f"escrow:{deal.pk}:refund").metadata["provider_reference"]
        == (second["id"])
    )
    assert escrow_balances()["held"] == 0 and ledger_integrity_report().is_clean


# --- transfers: the business schedule after a known decline, the protocol after an unknown -----------------------


@pytest.mark.django_db
def test_declined_transfers_are_retried_on_the_business_schedule_each_under_a_new_key(sandbox, settings):
    settings.ESCROW_TRANSFER_MAX_ATTEMPTS = 4
    buyer, account = UserFactory(), seller(sandbox, transfers="inactive")
    deal = deal_release(deal_id=held_deal(buyer, account).pk, actor=buyer)
    delays = []
    for attempt in (1, 2, 3):
        deal.refresh_from_db()
        assert (deal.status, deal.transfer_attempts) == (Status.TRANSFER_FAILED, attempt)
        delays.append(deal.next_transfer_at - timezone.now())
        assert deal_transfers_retry_due(now=deal.next_transfer_at - timedelta(seconds=1)) == 0  # not yet
        assert deal_transfers_retry_due(now=deal.next_transfer_at) == 1
    assert [round(delay / timedelta(hours=1)) for delay in delays] == [1, 2, 4]
    deal.refresh_from_db()
    assert (deal.transfer_attempts, deal.next_transfer_at) == (4, None)  # the last: a person decides
    assert Alert.objects.filter(key=f"escrow:deal:{deal.pk}:transfer", status=Alert.Status.OPEN).count() == 1
    keys = MoneyMovement.objects.filter(operation="escrow.transfer", subject_id=deal.pk).values_list("key", flat=True)
    base = f"escrow:{deal.pk}:transfer"
    assert sorted(keys) == [base, f"{base}:2", f"{base}:3", f"{base}:4"]
    assert not stripe_sandbox.state_of(sandbox).transfers and escrow_balances()["payable"] == deal.seller_net_minor


@pytest.mark.django_db
def test_an_unknown_transfer_is_left_to_the_sweeper_and_never_sent_under_a_new_key(sandbox):
    buyer = UserFactory()
    deal = held_deal(buyer, seller(sandbox), amount_minor=10_000)
    sandbox.add_fault(Fault(operation="stripe.transfers.create", kind="applied_then_timeout"))
    deal = deal_release(deal_id=deal.pk, actor=buyer)
    assert deal.status == Status.RELEASED and deal.next_transfer_at is None
    assert deal_transfers_retry_due(now=timezone.now() + timedelta(days=1)) == 0  # not the business retry's

    assert next_look(deal, "escrow.transfer").status == Movement.SUCCEEDED  # found by transfer_group and key
    deal.refresh_from_db()
    assert deal.status == Status.TRANSFERRED and len(transfers_at_stripe(sandbox, deal)) == 1
    assert sandbox.calls["stripe.transfers.create"] == 1 and deal.transfer_attempts == 1


# --- the timeout job's amount limit ----------------------------------------------------------------------------


@pytest.mark.django_db
def test_the_timeout_job_skips_a_deal_above_its_amount_limit_alerts_once_and_carries_on(sandbox, settings):
    settings.ESCROW_TIMEOUT_MAX_AMOUNT_PER_RUN_MINOR = 5_000
    account, buyer = seller(sandbox), UserFactory()
    big = held_deal(buyer, account, amount_minor=9_000)
    small = [held_deal(buyer, account, amount_minor=1_000) for _ in range(3)]
    overdue(big, by=timedelta(hours=3))  # the oldest: first in line
    overdue(*small)

    run = deal_timeouts_run()

    assert (run.processed, run.oversized, run.stopped_by, run.amounts) == (3, [big.pk], "", {"USD": 3_000})
    states = dict(EscrowDeal.objects.values_list("pk", "status"))
    assert states == {big.pk: Status.HELD, **{deal.pk: Status.REFUNDED for deal in small}}
    alert = Alert.objects.get(key=f"escrow:timeouts:oversized:{big.pk}", status=Alert.Status.OPEN)
    assert "$90.00" in alert.title and alert.severity == Alert.Severity.CRITICAL
    assert not Alert.objects.filter(key="escrow:timeouts:breaker").exists()  # the run did not stop

    again = deal_timeouts_run()  # the big deal is still due: still skipped, still one alert
    assert (again.processed, again.oversized) == (0, [big.pk])
    assert Alert.objects.filter(key__startswith="escrow:timeouts:oversized:").count() == 1
    assert sandbox.calls["stripe.payment_intents.cancel"] == 3


# --- maker-checker under the row lock ---------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_the_approval_reads_who_asked_under_the_deals_row_lock(sandbox, settings):
    """A release request commits while the approval waits for the deal's row: the approval sees it.

    Checked before the lock (as it once was), the approver would read the deal still `held` with nobody
    having asked, pass the check, then approve the release they asked for themselves."""
    settings.ESCROW_APPROVAL_THRESHOLD_MINOR = 50_000
    buyer, operator = UserFactory(), staff()
    deal = held_deal(buyer, seller(sandbox), amount_minor=60_000)
    request_locked, approval_waiting = threading.Event(), threading.Event()
    outcome: list[object] = []

    def release_request() -> None:  # the operator asks for the release, holding the row while committing
        try:
            with transaction.atomic():
                EscrowDeal.objects.select_for_update().get(pk=deal.pk)
                request_locked.set()
                assert approval_waiting.wait(10)
                EscrowDeal.status_move(deal.pk, Status.AWAITING_APPROVAL, sources=[Status.HELD],
                                       release_requested_by=operator)  # fmt: skip
        finally:
            connections.close_all()

    def approve() -> None:  # the same operator approves at the same moment
        assert request_locked.wait(10)
        try:
            outcome.append(deal_release_approve(deal_id=deal.pk, approver=operator).status)
        except Exception as error:  # the outcome is what the test checks
            outcome.append(error)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=release_request), threading.Thread(target=approve)]
    for thread in threads:
        thread.start()
    waited = _waits_for_a_row_lock(timeout=10)  # the approval is blocked on the deal's row
    approval_waiting.set()
    for thread in threads:
        thread.join(20)
    assert waited

    (result,) = outcome
    assert isinstance(result, DealMakerCheckerViolation), result
    deal.refresh_from_db()
    assert (deal.status, deal.release_requested_by, deal.approved_by) == (Status.AWAITING_APPROVAL, operator, None)
    assert sandbox.calls["stripe.payment_intents.capture"] == 0
    assert deal_release_approve(deal_id=deal.pk, approver=staff()).status == Status.TRANSFERRED  # someone else may


def _waits_for_a_row_lock(*, timeout: float) -> bool:
    """True once another session of this database waits on a lock (the approval, blocked on the deal's row)."""
    deadline = time.monotonic() + timeout
    with connection.cursor() as cursor:
        while time.monotonic() < deadline:
            cursor.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'"
            )
            if cursor.fetchone()[0]:
                return True
            time.sleep(0.02)
    return False
