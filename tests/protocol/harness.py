"""What every protocol case shares: the case's context, the provider's webhooks brought to our endpoint,
faults the sandbox cannot inject itself (circuit open, connection refused, a process dying before our commit),
moving time for the sweepers (no sleeps), and the three checks of issue 9.

Cases run in the test's transaction (rolled back after): webhooks the sandbox sends over HTTP land in a relay
and are POSTed to /webhooks/<provider>/ from the test's thread, and what the code defers to commit runs at the
end of each step (`commits`).

Checks, after the sweepers ran until quiet:
1. exactly one money movement at the sandbox per intent (MoneyMovement row of the operation);
2. the ledger posting of each finished movement equals the sandbox's amount on the right accounts, and the
   ledger integrity report is clean;
3. no movement left open without `next_sync_at`, unless an open staff alert `movement:<key>` exists for it.
"""

from __future__ import annotations

import functools
import re
import socket
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from django.core.exceptions import ObjectDoesNotExist
from django.db import connection
from django.db.models import Q
from django.test import Client, override_settings
from django.utils import timezone

from core.models import Alert
from ledger.integrity import ledger_integrity_report
from ledger.models import Entry
from providers.models import MoneyMovement, WebhookEvent
from providers.protocol import engine
from providers.protocol.operations import operation_get
from providers.sandbox.server import Sandbox, SandboxRequest, SandboxResponse

OPEN = MoneyMovement.OPEN
SWEEP_ROUNDS = len(engine.SYNC_SCHEDULE) + 6  # enough for every schedule to run out, and follow-ups to finish
PROVIDER_ROUNDS = 4  # provider-side work (PayPal items) advances one step per round: a batch needs this many

# our webhook endpoint (/webhooks/<name>/) per sandbox provider
WEBHOOK_ENDPOINTS = {"stripe": "stripe", "paypal": "paypal", "paymongo": "gcash", "maya": "maya"}


@dataclass
class Case:
    """One case of the matrix: the sandbox, the webhooks it relayed to us, and what `prepare` built."""

    sandbox: Sandbox
    data: dict[str, Any] = field(default_factory=dict)
    errors: list[BaseException] = field(default_factory=list)  # what the triggering call raised, if anything

    def call(self, service: Callable[[], Any]) -> None:
        """Call a domain's public service; a domain error (e.g. 'outcome unknown, look later') is its answer to
        the fault, kept in `errors`, not the end of the case."""
        from core.errors import AppError

        try:
            self.data["result"] = service()
        except AppError as error:
            self.errors.append(error)

    def webhooks_to_us(self, sandbox_provider: str, **faults: int) -> None:
        """The provider's webhooks (after the dispatcher's drop / duplicate faults) come to us: each is POSTed
        to our /webhooks/<provider>/ endpoint by `deliver_webhooks`, in this test's thread and transaction."""
        relay_install(self.sandbox)
        self.sandbox.webhooks.configure(
            sandbox_provider, url=f"{self.sandbox.url}{RELAY_PATH}/{sandbox_provider}", **faults
        )


# --- webhooks: the sandbox delivers them over HTTP to a relay; our endpoint receives them in this thread ------

RELAY_PATH = "/_test/protocol/webhooks"
RELAYED: list[tuple[str, bytes, dict[str, str]]] = []  # (sandbox provider, body, headers), in arrival order
_relay_lock = threading.Lock()


def relay_install(sandbox: Sandbox) -> None:
    if any(route.operation == "_control.test.protocol.webhooks" for route in sandbox.routes):
        return

    @sandbox.route("POST", f"{RELAY_PATH}/(?P<provider>[a-z]+)", "_control.test.protocol.webhooks")
    def receive(request: SandboxRequest, match: re.Match[str]) -> SandboxResponse:
        with _relay_lock:
            RELAYED.append((match["provider"], request.body, dict(request.headers)))
        return SandboxResponse(200, {"received": True})


def relay_clear() -> None:
    with _relay_lock:
        RELAYED.clear()


def deliver_webhooks(sandbox: Sandbox) -> int:
    """Every webhook the sandbox sent so far reaches our endpoint (and is processed), in this thread."""
    sandbox.webhooks.wait_idle()
    with _relay_lock:
        batch = list(RELAYED)
        RELAYED.clear()
    client = Client()
    for provider, body, headers in batch:
        content_type = headers.pop("content-type", "application/json")
        headers.pop("content-length", None)
        with commits():
            response = client.post(
                f"/webhooks/{WEBHOOK_ENDPOINTS[provider]}/", data=body, content_type=content_type, headers=headers
            )
        assert response.status_code < 500, response.content
    return len(batch)


@contextmanager
def commits() -> Iterator[None]:
    """What the code defers to commit (`transaction.on_commit`) runs at the end of the block, once, as it would
    once the block's transaction committed: the test's own wrapping transaction never commits. Blocks nest."""
    start = len(connection.run_on_commit)
    try:
        yield
    finally:
        while len(connection.run_on_commit) > start:
            pending = connection.run_on_commit[start:]
            del connection.run_on_commit[start:]
            for _savepoints, callback, _robust in pending:
                callback()


# --- time: instead of sleeping, move every due date into the past ----------------------------------


def make_due(queryset: Any = None) -> int:
    """Every open movement with a next look is due now; every claim has lapsed (time passed)."""
    rows = queryset if queryset is not None else MoneyMovement.objects.all()
    past = timezone.now() - timedelta(seconds=1)
    rows.filter(status__in=OPEN, claimed_until__isnull=False).update(claimed_until=past)
    return rows.filter(status__in=OPEN, next_sync_at__isnull=False).update(next_sync_at=past)


def webhooks_due() -> None:
    """Webhook events waiting for a retry are due for the webhook sweeper."""
    past = timezone.now() - timedelta(hours=1)
    WebhookEvent.objects.filter(status__in=[WebhookEvent.Status.RECEIVED, WebhookEvent.Status.FAILED]).update(
        updated_at=past
    )


# The beat jobs (config.settings.CELERY_BEAT_SCHEDULE) but the nightly reports and key purges; the protocol's
# sweeper runs last in each round.
NOT_SWEEPERS = frozenset({"ledger.check_integrity", "monitoring.reconcile_yesterday", "core.purge_idempotency_keys"})
MOVEMENT_SWEEPER = "providers.sweep_money_movements"


@functools.cache
def sweepers() -> tuple[Any, ...]:
    from celery import current_app
    from django.conf import settings

    current_app.loader.import_default_modules()  # every app's tasks module, as a worker loads them
    names = {entry["task"] for entry in settings.CELERY_BEAT_SCHEDULE.values()} - NOT_SWEEPERS
    missing = sorted(name for name in names if name not in current_app.tasks)
    assert not missing, f"beat jobs without a task: {missing}"
    return tuple(current_app.tasks[name] for name in sorted(names, key=lambda name: (name == MOVEMENT_SWEEPER, name)))


def run_sweepers() -> None:
    for task in sweepers():
        with commits():
            task()


def sweep_until_quiet(sandbox: Sandbox, *, rounds: int = SWEEP_ROUNDS, at_least: int = 1) -> int:
    """The beat jobs, as often as it takes: provider async work advances (a PayPal batch needs a few ticks),
    due movements are looked up, lost or failed webhook events are processed again. Stops once nothing open
    has a next look, after at least `at_least` rounds."""
    for done in range(rounds):
        with commits():
            sandbox.tick()
        deliver_webhooks(sandbox)
        webhooks_due()
        due = make_due()
        run_sweepers()
        deliver_webhooks(sandbox)
        if (
            done + 1 >= at_least
            and not due
            and not MoneyMovement.objects.filter(status__in=OPEN, next_sync_at__isnull=False).exists()
        ):
            return done
    return rounds


def sync_once(operation: str) -> None:
    """One look at each open movement of the operation now (the sweeper's next visit, time moved)."""
    rows = MoneyMovement.objects.filter(operation=operation)
    make_due(rows)
    for pk in rows.filter(status__in=OPEN).values_list("pk", flat=True):
        with commits():
            engine.movement_sync(movement_id=pk)


def wait_until_applied(case: Case, operation: str, count: CountMovements, *, seconds: float = 5.0) -> None:
    """The provider finished applying what it was sent: on a loaded machine it may still be at it when our
    client gave up. (Hours pass before a key is forgotten; no request stays in flight that long.)"""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            if all(count(case, movement) >= 1 for movement in movements_of(operation)):
                return
        except (LookupError, ValueError, AttributeError, ObjectDoesNotExist):  # its objects are not all there yet
            pass
        time.sleep(0.01)


def age_first_send(operation: str, by: timedelta) -> None:
    """The provider's key window has passed since the first send of the operation's movements."""
    rows = MoneyMovement.objects.filter(operation=operation, first_sent_at__isnull=False)
    for row in rows:
        MoneyMovement.objects.filter(pk=row.pk).update(first_sent_at=row.first_sent_at - by)


# --- faults the sandbox cannot inject by itself -------------------------------------------------------


def closed_port_url() -> str:
    """An address where nothing listens: a connection there is refused."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"http://127.0.0.1:{port}"


@contextmanager
def connections_refused() -> Iterator[None]:
    with override_settings(SANDBOX_URL=closed_port_url()):
        yield


@contextmanager
def circuit_open(provider: str) -> Iterator[None]:
    """The provider's breaker open (as after a run of failures), then closed again."""
    from django.conf import settings

    from providers.base import Unknown
    from providers.breaker import breaker_for

    breaker = breaker_for(provider)
    threshold = int(settings.PROVIDER_BREAKER_DEFAULTS.get("failure_threshold", 5))
    for _ in range(threshold + 1):
        breaker.record(Unknown(reason="forced open by the test"))
    assert breaker.is_refusing()
    try:
        yield
    finally:
        breaker.reset()


class ProcessDied(BaseException):
    """The worker died between the provider's answer and our commit."""


@contextmanager
def dies_before_recording(operation: str, died: list[int]) -> Iterator[None]:
    """The first outcome of `operation` to be recorded is never recorded: the process dies there."""
    original = engine._record

    def record(movement: MoneyMovement, *args: Any, **kwargs: Any) -> Any:
        if movement.operation == operation and not died:
            died.append(movement.pk)
            raise ProcessDied(f"died before recording {movement.key}")
        return original(movement, *args, **kwargs)

    engine._record = record  # type: ignore[assignment]
    try:
        yield
    finally:
        engine._record = original  # type: ignore[assignment]


@contextmanager
def webhooks_before_return(operation: str, sandbox: Sandbox, delivered: list[int]) -> Iterator[None]:
    """The operation's call returns only once the provider's webhooks were delivered (and processed)."""
    recipe = operation_get(operation)
    original = recipe.send

    def send(movement: MoneyMovement) -> Any:
        result = original(movement)
        delivered.append(deliver_webhooks(sandbox))
        return result

    recipe.send = send  # type: ignore[method-assign]
    try:
        yield
    finally:
        del recipe.send  # back to the class's method


# --- the checks ---------------------------------------------------------------------------------------


def movements_of(operation: str) -> list[MoneyMovement]:
    return list(MoneyMovement.objects.filter(operation=operation).order_by("id"))


def ledger_net(*, reference: str = "", key_prefix: str = "") -> dict[str, int]:
    """Net minor units (debit positive) per account over the ledger transactions naming the provider
    reference in their metadata, or keyed under `key_prefix`."""
    match = Q()
    if reference:
        match |= Q(transaction__metadata__provider_reference=reference)
    if key_prefix:
        match |= Q(transaction__idempotency_key__startswith=key_prefix)
    assert match, "name a reference or a key prefix"
    net: dict[str, int] = defaultdict(int)
    for code, minor in Entry.objects.filter(match).values_list("account__code", "amount_minor"):
        net[code] += minor
    return {code: minor for code, minor in net.items() if minor}


@dataclass(frozen=True)
class Posting:
    """What the ledger must show for one movement: the net per account of the matching transactions."""

    accounts: dict[str, int]
    reference: str = ""  # transactions whose metadata names this provider reference
    key_prefix: str = ""  # or whose idempotency key starts so

    def actual(self) -> dict[str, int]:
        return ledger_net(reference=self.reference, key_prefix=self.key_prefix)

    def expected(self) -> dict[str, int]:
        return {code: minor for code, minor in self.accounts.items() if minor}


def open_alert(movement: MoneyMovement) -> bool:
    return Alert.objects.filter(key=f"movement:{movement.key}", status=Alert.Status.OPEN).exists()


CountMovements = Callable[[Case, MoneyMovement], int]
ExpectPostings = Callable[[Case, MoneyMovement], list[Posting]]


def check_outcome(case: Case, operation: str, count: CountMovements, expect: ExpectPostings) -> list[str]:
    """The three checks of issue 9 for every movement of the operation; returns what is wrong."""
    problems: list[str] = []
    movements = movements_of(operation)
    if not movements:
        return [f"no {operation} movement was recorded (trigger raised {case.errors!r})"]
    for movement in movements:
        label = f"{movement.key} ({movement.status}: {movement.failure_reason[:200]})"
        moved = count(case, movement)
        if moved != 1:
            problems.append(f"{label}: {moved} movements at the sandbox, expected exactly 1")
        if movement.status in OPEN and movement.next_sync_at is None and not open_alert(movement):
            problems.append(f"{label}: open without a next look and without an open alert")
        if movement.status == MoneyMovement.Status.SUCCEEDED:
            for posting in expect(case, movement):
                actual, expected = posting.actual(), posting.expected()
                if actual != expected:
                    problems.append(f"{label}: ledger {posting.reference or posting.key_prefix} {actual} != {expected}")
        elif movement.status in OPEN and not open_alert(movement):
            problems.append(f"{label}: still open after the sweepers ran out (next look {movement.next_sync_at})")
        elif movement.status == MoneyMovement.Status.DECLINED and moved:
            problems.append(f"{label}: declined while the sandbox moved the money")
    report = ledger_integrity_report()
    if not report.is_clean:
        problems.append(f"ledger integrity: {sorted(report.codes())}")
    return problems
