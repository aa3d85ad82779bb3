"""Redis (the Celery broker, the shared cache and the circuit breakers) restarted in the middle of a run, empty:
queued tasks and breaker state are gone. A redis-server of this test's own, on a spare port, under a stack of
its own. Payments keep coming through the API and deal releases through the workers; after Redis is back,
the beat jobs run until quiet and the bank invariant (tests.chaos.invariants) must hold."""

from __future__ import annotations

import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
import redis

from escrow.models import EscrowDeal
from ops.stack import Stack, free_port
from providers.models import Payment
from tests.chaos import results, world
from tests.chaos.invariants import bank_report
from tests.escrow.factories_deals import UserFactory, held_deal, overdue, seller

pytestmark = [pytest.mark.chaos]

REDIS_SERVER = shutil.which("redis-server")


class OwnRedis:
    """A redis-server without persistence on a spare port: a restart loses everything, as a fresh node would."""

    def __init__(self, work_dir: Path) -> None:
        self.port, self.work_dir = free_port(), work_dir
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.work_dir.mkdir(parents=True, exist_ok=True)
        command = [str(REDIS_SERVER), "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                   "--appendonly", "no", "--dir", str(self.work_dir)]  # fmt: skip
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # noqa: S603 - our own fixed command
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                if redis.Redis.from_url(self.url).ping():
                    return
            except redis.ConnectionError:
                time.sleep(0.1)
        raise AssertionError(f"redis-server on port {self.port} did not start")

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)


@pytest.fixture(scope="module")
def redis_stack(django_db_setup: None) -> Iterator[tuple[Stack, OwnRedis]]:
    if REDIS_SERVER is None:
        pytest.skip("redis-server is not installed")
    own = OwnRedis(world.ROOT / "var" / "chaos" / "redis")
    own.start()
    try:
        with world.stack_for("redis", own.url) as stack:
            yield stack, own
    finally:
        own.kill()


def _pay_until_answered(api: world.Api, key: str, seconds: float = 60.0) -> int:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            answer = api.pay(1_900, key)
            if answer.status_code < 500 and answer.status_code != 409:
                return answer.status_code
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    return 0


def test_redis_restarted_mid_run(redis_stack, settings, django_db_blocker):
    stack, own = redis_stack
    with world.on_stack_database(stack, settings, django_db_blocker):
        tasks = world.Tasks(stack.redis_url)
        try:
            _run(stack, own, tasks)
        finally:
            tasks.close()


def _run(stack: Stack, own: OwnRedis, tasks: world.Tasks) -> None:
    api, before = world.api_client(stack), world.succeeded()
    account = seller(None)
    deals = [held_deal(UserFactory(), account, amount_minor=2_100 + n, timeout_policy="release") for n in range(4)]
    overdue(*deals)
    keys = [uuid.uuid4().hex for _ in range(12)]
    with ThreadPoolExecutor(max_workers=3) as pool:
        answers = pool.map(lambda key: _pay_until_answered(api, key), keys)
        tasks.send("escrow.apply_deal_timeouts")
        time.sleep(1.0)
        own.kill()  # mid-run: the queue, the cache and the breakers are gone
        time.sleep(2.0)
        own.start()
        answers = list(answers)
    assert all(answer == 201 for answer in answers), answers

    def done() -> bool:
        statuses = set(EscrowDeal.objects.filter(pk__in=[d.pk for d in deals]).values_list("status", flat=True))
        return statuses == {EscrowDeal.Status.TRANSFERRED}

    world.settle(stack, tasks, done=done, seconds=120)
    payments = Payment.objects.filter(user=api.user)
    assert sorted(payments.values_list("client_key", flat=True)) == sorted(keys)
    assert set(payments.values_list("status", flat=True)) == {Payment.Status.SUCCEEDED}
    report = bank_report(settled=True)
    results.record("Redis restarted mid-run", "killed, empty, back after 2 s", tried=len(keys) + len(deals),
                   moved=world.succeeded() - before, report=report)  # fmt: skip
    assert not report.problems, "bank invariant broken:\n" + "\n".join(report.problems)
