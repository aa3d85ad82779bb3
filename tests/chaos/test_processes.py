"""Real processes die for real (DESIGN.md section 12): a Celery worker SIGKILLed at each step of the protocol,
a gunicorn worker killed in the middle of a payment request, one task delivered to both workers at once, and
PostgreSQL connections terminated under load. After each, the beat jobs run until quiet and the bank invariant
(tests.chaos.invariants) must hold: nothing lost, nothing doubled."""

from __future__ import annotations

import os
import signal
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import httpx
import psycopg
import pytest
from django.db import connection

from escrow.models import EscrowDeal
from providers.models import MoneyMovement, Payment
from providers.protocol.pause import STEPS
from tests.chaos import results, world
from tests.chaos.invariants import bank_report
from tests.escrow.factories_deals import UserFactory, held_deal, overdue, seller

pytestmark = [pytest.mark.chaos]

RUNS = 2  # per step
RELEASE = EscrowDeal.TimeoutPolicy.RELEASE


def _check(scenario: str, fault: str, tried: int, moved_before: int) -> None:
    report = bank_report(settled=True)
    results.record(scenario, fault, tried=tried, moved=world.succeeded() - moved_before, report=report)
    assert not report.problems, "bank invariant broken:\n" + "\n".join(report.problems)


def _overdue_deals(count: int) -> list[EscrowDeal]:
    account = seller(None)
    deals = [held_deal(UserFactory(), account, amount_minor=2_000 + n, timeout_policy=RELEASE) for n in range(count)]
    overdue(*deals)
    return deals


def _all_transferred(deals: list[EscrowDeal]) -> bool:
    statuses = set(EscrowDeal.objects.filter(pk__in=[d.pk for d in deals]).values_list("status", flat=True))
    return statuses == {EscrowDeal.Status.TRANSFERRED}


@pytest.mark.parametrize("step", STEPS)
def test_a_worker_sigkilled_at_each_protocol_step(on_stack, tasks, step):
    """The timeout job releases an overdue deal in a worker; the worker dies at the step; another finishes it."""
    before, deals = world.succeeded(), []
    for _ in range(RUNS):
        (deal,) = _overdue_deals(1)
        world.pause_at(step, "escrow.capture")
        tasks.send("escrow.apply_deal_timeouts")
        pid, key = world.wait_paused()
        assert key == f"escrow:{deal.pk}:capture"
        name = world.owner_of(on_stack, pid)
        assert name.startswith("worker"), name
        on_stack.kill(name)
        world.pause_disarm()
        on_stack.start(name)
        deals.append(deal)
    world.settle(on_stack, tasks, done=lambda: _all_transferred(deals))
    _check("Celery worker SIGKILLed", step, RUNS, before)


@pytest.mark.parametrize("step", ("before_send", "after_send"))
def test_a_web_worker_killed_mid_request(on_stack, tasks, step):
    """The client's payment request dies with its gunicorn worker; the client retries with the same key."""
    api, before = world.api_client(on_stack), world.succeeded()
    keys = [uuid.uuid4().hex for _ in range(RUNS)]
    for key in keys:
        world.pause_at(step, "payment.start")
        with ThreadPoolExecutor(max_workers=1) as pool:
            first = pool.submit(api.pay, 1_500, key)
            pid, _ = world.wait_paused()
            assert world.owner_of(on_stack, pid) == "web"
            os.kill(pid, signal.SIGKILL)  # one gunicorn worker of the stack; its master starts another
            with pytest.raises(httpx.HTTPError):
                first.result()
        world.pause_disarm()
        assert _replayed(api, key).status_code == 201
    world.settle(on_stack, tasks)
    payments = Payment.objects.filter(user=api.user)
    assert sorted(payments.values_list("client_key", flat=True)) == sorted(keys)  # one payment per key
    assert set(payments.values_list("status", flat=True)) == {Payment.Status.SUCCEEDED}
    _check("gunicorn worker killed mid-request", step, RUNS, before)


def _replayed(api: world.Api, key: str, seconds: float = 30.0) -> httpx.Response:
    """The client's retries under the same key: 409 while the dead request still counts as in flight."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        answer = api.pay(1_500, key)
        if answer.status_code != 409:
            return answer
        time.sleep(0.5)
    raise AssertionError(f"the key {key} stayed in flight for {seconds:.0f} s")


def test_the_same_task_delivered_twice_to_two_workers_at_once(on_stack, tasks):
    api, before = world.api_client(on_stack), world.succeeded()
    world.stripe_webhooks(on_stack, drop=1_000)  # no webhook tells us: only a look-up can
    for _ in range(3):  # payments the provider made while our call timed out: unknown
        world.sandbox_fault(on_stack, "stripe.payment_intents.create", "applied_then_timeout")
        assert api.pay(2_500).status_code == 201
    unknown = list(MoneyMovement.objects.filter(operation="payment.start", status=MoneyMovement.Status.UNKNOWN))
    assert len(unknown) >= 3
    world.make_due()
    for movement in unknown:
        tasks.send("providers.sync_money_movement", movement.pk)
        tasks.send("providers.sync_money_movement", movement.pk)
    deals = _overdue_deals(3)
    tasks.send("escrow.apply_deal_timeouts")
    tasks.send("escrow.apply_deal_timeouts")
    world.settle(on_stack, tasks, done=lambda: _all_transferred(deals))
    for payment in Payment.objects.filter(user=api.user):  # re-sent, if at all, only under the first key
        assert payment.attempts.count() == 1
    assert set(Payment.objects.filter(user=api.user).values_list("status", flat=True)) == {Payment.Status.SUCCEEDED}
    _check("one task delivered twice at once", "sync + timeout job, both workers", len(unknown) + 3, before)


def test_postgres_connections_terminated_mid_transaction(on_stack, tasks):
    """Payments through the API and deal releases in the workers while their connections are cut."""
    api, before = world.api_client(on_stack), world.succeeded()
    deals = _overdue_deals(4)
    keys = [uuid.uuid4().hex for _ in range(12)]
    stop, terminated = threading.Event(), []
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        ours = cursor.fetchone()[0]
    killer = threading.Thread(target=_terminate_backends, args=(on_stack, ours, stop, terminated))
    killer.start()
    try:
        tasks.send("escrow.apply_deal_timeouts")
        with ThreadPoolExecutor(max_workers=4) as pool:
            answers = list(pool.map(lambda key: _pay_until_answered(api, key), keys))
    finally:
        stop.set()
        killer.join()
    assert sum(terminated) > 0, "no connection was terminated"
    assert all(answer == 201 for answer in answers), answers
    world.settle(on_stack, tasks, done=lambda: _all_transferred(deals), seconds=90)
    assert Payment.objects.filter(user=api.user).count() == len(keys)
    _check("PostgreSQL connections terminated", f"{sum(terminated)} backends cut", len(keys) + len(deals), before)


def _pay_until_answered(api: world.Api, key: str, seconds: float = 60.0) -> int:
    """The client retries (same key) what a cut connection failed, as a client app does."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            answer = api.pay(1_700, key)
        except httpx.HTTPError:
            answer = None
        if answer is not None and answer.status_code < 500 and answer.status_code != 409:
            return answer.status_code
        time.sleep(0.5)
    return 0


def _terminate_backends(stack, ours: int, stop: threading.Event, terminated: list[int]) -> None:
    name = stack.database_url.rsplit("/", 1)[1]
    with psycopg.connect(f"{world.POSTGRES}/postgres", autocommit=True) as admin:
        for _ in range(8):
            if stop.wait(0.4):
                return
            rows = admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s AND pid <> %s "
                "AND backend_type = 'client backend'",
                [name, ours],
            ).fetchall()
            terminated.append(sum(1 for (done,) in rows if done))
