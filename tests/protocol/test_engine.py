"""The protocol engine itself (providers.protocol.engine), with one real operation: payment.refund (a refund
of a Stripe card payment through the orchestrator), over real HTTP against the sandbox.

- a claimed movement is sent by one worker only, however many try at once;
- an unknown outcome stays unknown when the re-send is refused;
- once the one SYNC_SCHEDULE has run out, exactly one staff alert is open and the sweeper stops looking;
- a provider is never called inside a transaction that may roll back.
"""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest
from django.db import connection, transaction
from django.utils import timezone

from core.models import Alert
from providers.base import Unknown
from providers.breaker import breaker_for
from providers.models import MoneyMovement
from providers.protocol import engine
from providers.protocol.operations import operation_get
from providers.sandbox import stripe as stripe_sandbox
from providers.sandbox.server import Fault, Sandbox
from tests.protocol import rows_payments
from tests.protocol.faults import REFUSALS
from tests.protocol.harness import Case, ProcessDied, commits, dies_before_recording, make_due, open_alert

pytestmark = pytest.mark.usefixtures("roles_synced_once_per_flush")

OPERATION = "payment.refund"
Status = MoneyMovement.Status


def refund_started(sandbox: Sandbox, *faults: Fault) -> MoneyMovement:
    """A succeeded card payment, then a refund requested with the faults armed on its call."""
    case = Case(sandbox=sandbox)
    with commits():
        rows_payments.prepare_refund(case)
    for fault in faults:
        sandbox.add_fault(fault)
    with commits():
        rows_payments.trigger_refund(case)
    return MoneyMovement.objects.get(operation=OPERATION)


def refunds_at_stripe(sandbox: Sandbox) -> list[int]:
    return [refund["amount"] for refund in stripe_sandbox.state_of(sandbox).refunds.values()]


def applied_then_timeout() -> Fault:
    return Fault(operation="stripe.refunds.create", kind="applied_then_timeout", times=1)


@pytest.mark.django_db
def test_a_refused_re_send_after_an_unknown_outcome_leaves_it_unknown(
    fast_sandbox, default_payment_config, monkeypatch
):
    movement = refund_started(fast_sandbox, applied_then_timeout())
    assert (movement.status, movement.was_unknown) == (Status.UNKNOWN, True)
    recipe = operation_get(OPERATION)
    monkeypatch.setattr(recipe, "look_up", lambda movement: None)  # no look-up: the engine may only re-send
    for kind in ("already_refunded", "decline", "idempotency_error", "http_429", "http_500"):
        fast_sandbox.add_fault(Fault(operation="stripe.*", kind="error", times=None, **REFUSALS[kind]["stripe"]))
        make_due()
        sends = fast_sandbox.calls["stripe.refunds.create"]
        movement = engine.movement_sync(movement_id=movement.pk)
        fast_sandbox.clear_faults()
        assert fast_sandbox.calls["stripe.refunds.create"] == sends + 1, f"{kind}: the keyed re-send was not made"
        assert movement.status == Status.UNKNOWN, f"{kind}: a refused re-send was taken as an outcome"
        assert movement.next_sync_at is not None or open_alert(movement), f"{kind}: left without a next look"
    movement = engine.movement_sync(movement_id=movement.pk, force=True)  # the keyed re-send answered: a replay
    assert movement.status == Status.SUCCEEDED
    assert refunds_at_stripe(fast_sandbox) == [rows_payments.REFUND]


@pytest.mark.django_db
def test_when_the_schedule_runs_out_exactly_one_alert_is_open_and_the_sweeper_stops(
    fast_sandbox, default_payment_config
):
    movement = refund_started(fast_sandbox, applied_then_timeout())
    fast_sandbox.add_fault(Fault(operation="stripe.*", kind="error", times=None, status=503))
    for _ in range(len(engine.SYNC_SCHEDULE) + 3):
        breaker_for("stripe").reset()  # each sweep really asks Stripe (a look our open circuit refused spends no step)
        make_due()
        engine.movements_sweep()
    movement.refresh_from_db()
    assert movement.status == Status.UNKNOWN
    assert (movement.next_sync_at, movement.sync_attempts) == (None, len(engine.SYNC_SCHEDULE))
    assert movement.escalated_at is not None
    alert = Alert.objects.get(key=f"movement:{movement.key}")
    assert (alert.status, alert.occurrences, alert.severity) == (Alert.Status.OPEN, 1, Alert.Severity.CRITICAL)
    assert not engine.movements_due().exists()

    fast_sandbox.clear_faults()  # staff look again ('Sync now'): found, finished; the alert stays for staff
    breaker_for("stripe").reset()  # the run of 503s opened it
    movement = engine.movement_sync(movement_id=movement.pk, force=True)
    assert movement.status == Status.SUCCEEDED
    assert refunds_at_stripe(fast_sandbox) == [rows_payments.REFUND]


@pytest.mark.django_db
def test_a_look_our_open_circuit_refused_spends_no_step_of_the_schedule(fast_sandbox, default_payment_config):
    movement = refund_started(fast_sandbox, applied_then_timeout())
    attempts = movement.sync_attempts
    breaker = breaker_for("stripe")
    for _ in range(breaker.config.failure_threshold):
        breaker.record(Unknown(reason="timed out"))  # a Stripe outage seen by other calls
    calls = dict(fast_sandbox.calls)
    for _ in range(len(engine.SYNC_SCHEDULE) + 2):  # an outage longer than the whole schedule
        make_due()
        engine.movements_sweep()
    movement.refresh_from_db()
    assert dict(fast_sandbox.calls) == calls  # nothing was asked while the circuit was open
    assert (movement.status, movement.sync_attempts, movement.escalated_at) == (Status.UNKNOWN, attempts, None)
    assert movement.next_sync_at is not None and not open_alert(movement)

    breaker.reset()  # Stripe is back: the next look finds the refund the timed-out call made
    make_due()
    engine.movements_sweep()
    movement.refresh_from_db()
    assert movement.status == Status.SUCCEEDED
    assert refunds_at_stripe(fast_sandbox) == [rows_payments.REFUND]


@pytest.mark.django_db
def test_no_provider_call_inside_a_transaction_that_may_roll_back(fast_sandbox, default_payment_config):
    movement = refund_started(fast_sandbox, applied_then_timeout())
    calls = dict(fast_sandbox.calls)
    with pytest.raises(RuntimeError), transaction.atomic():
        engine.movement_run(movement)
    with pytest.raises(RuntimeError), transaction.atomic():
        engine.movement_sync(movement_id=movement.pk, force=True)
    assert dict(fast_sandbox.calls) == calls  # nothing was sent or looked up


@pytest.mark.django_db
def test_a_movement_is_sent_once_however_often_it_is_run(fast_sandbox, default_payment_config):
    movement = refund_started(fast_sandbox)
    assert movement.status == Status.SUCCEEDED
    for _ in range(3):
        engine.movement_run(movement)
        make_due()
        engine.movements_sweep()
    assert fast_sandbox.calls["stripe.refunds.create"] == 1
    assert refunds_at_stripe(fast_sandbox) == [rows_payments.REFUND]


@pytest.mark.django_db(transaction=True)
def test_two_workers_at_once_claim_it_once_and_only_one_calls_the_provider(fast_sandbox, default_payment_config):
    died: list[int] = []
    with dies_before_recording(OPERATION, died), pytest.raises(ProcessDied):
        refund_started(fast_sandbox)  # the refund went out; the worker died before recording it
    assert died
    movement = MoneyMovement.objects.get(operation=OPERATION)
    assert (movement.status, movement.claimed_until > timezone.now()) == (Status.PENDING, True)
    assert engine.movement_sync(movement_id=movement.pk, force=True).status == Status.PENDING  # still claimed

    MoneyMovement.objects.filter(pk=movement.pk).update(claimed_until=timezone.now() - timedelta(seconds=1))
    stripe_sandbox.state_of(fast_sandbox).processing_delay_seconds = 0.1  # both are in flight together
    looks = fast_sandbox.calls["stripe.refunds.list"] + fast_sandbox.calls["stripe.refunds.retrieve"]
    start, results = threading.Barrier(2), []

    def worker() -> None:
        try:
            start.wait()
            results.append(engine.movement_sync(movement_id=movement.pk, force=True).status)
        finally:
            connection.close()

    threads = [threading.Thread(target=worker) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert len(results) == 2
    after = fast_sandbox.calls["stripe.refunds.list"] + fast_sandbox.calls["stripe.refunds.retrieve"]
    assert after - looks == 1, "both workers asked Stripe"
    assert fast_sandbox.calls["stripe.refunds.create"] == 1
    movement.refresh_from_db()
    assert (movement.status, movement.sends) == (Status.SUCCEEDED, 2)
    assert refunds_at_stripe(fast_sandbox) == [rows_payments.REFUND]
