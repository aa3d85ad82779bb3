"""Throughput of one 15,000-item PayPal payout batch: prepare, submit, settle (payouts/services/).

Usage:
    DATABASE_URL=postgres://postgres@127.0.0.1:5432/backoffice .venv/bin/python bench/payout_batch.py

DATABASE_URL only says which server to use: the script creates its own database
(bench_payout_batch_<pid>), migrates it, and drops it at the end, even on failure.
The provider sandbox runs in this process, over real HTTP on a free port.

Setup (not measured): an operator and an approver (staff with the payout permissions),
BENCH_ITEMS winners (default 15,000, the PayPal batch limit) with EMAIL recipients the
sandbox pays by its default rule (SUCCESS), and the prize pool funded with `winnings_fund`.

Phases, each measured on its own and printed as it finishes:
1. prepare: `cycle_prepare` validates the winners, creates the batch, its items and one
   ledger hold per item; the batch is then approved by the second staff user (not measured:
   its total is above PAYOUT_APPROVAL_THRESHOLD_MINOR, as a real cycle's would be);
2. submit: `batch_execute` sends one PayPal create with every item, which the sandbox
   validates (the official schema, then PayPal's own checks) before answering;
3. settle: the sandbox ticks until every item is final (timed apart as "provider": that is
   the provider's work, not ours), then `batch_sync` pages through the batch, each page of
   1000 items one transaction that posts its holds with one batched ledger call (two pages
   applied at once; BENCH_APPLIERS=N sets settings.PAYOUT_SETTLE_APPLIERS). The figure is
   the `batch_sync` time.

Each phase also reports its Django query count (the ledger's own statements and the appliers'
connections are not seen), this process's CPU time (our code and the in-process sandbox) and
the CPU time of the PostgreSQL backend serving this process's connection.
BENCH_PROFILE=prepare,submit,settle (or "all") runs those phases under cProfile and prints
where the time goes (the figures are then slower than without it; settle then applies one
page at a time, as cProfile sees one thread). The checks at the end: the batch is completed,
every item is SUCCESS, every hold is posted, the payable account owes what was not paid, and
`ledger_integrity_report()` is clean.

total_seconds is prepare + submit + provider + settle: from prepare until every item is final
and posted (the approval by a second person in between is not counted).

The last line is machine-readable:
    payout_batch items=N prepare_items_per_s=N submit_items_per_s=N settle_items_per_s=N total_seconds=N peak_rss_mb=N
"""

from __future__ import annotations

import cProfile
import io
import os
import pstats
import resource
import signal
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

ROOT = Path(__file__).resolve().parents[1]
# Keep bench/ off sys.path: bench/ledger.py would shadow the `ledger` app.
sys.path[:] = [str(ROOT)] + [p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"]

from bench.benchdb import Server, bench_database, checkpoint, django_setup  # noqa: E402 - needs the path above

ITEMS = int(os.environ.get("BENCH_ITEMS", "15000"))
PHASES = ("prepare", "submit", "settle")
_profile_setting = os.environ.get("BENCH_PROFILE", "").strip()
PROFILED = set(PHASES) if _profile_setting == "all" else {p for p in _profile_setting.split(",") if p}
PROFILE_LINES = int(os.environ.get("BENCH_PROFILE_LINES", "35"))
CURRENCY = "USD"
MAX_TICKS = 10
PERMISSIONS = ("prepare_payoutbatch", "approve_payoutbatch", "execute_payoutbatch")

T = TypeVar("T")


def amount_minor(index: int) -> int:
    """10.00 to 34.75 USD: varied amounts, all exact in cents."""
    return 1_000 + (index % 100) * 25


# --- the database -------------------------------------------------------------


# --- the provider sandbox -------------------------------------------------------


@contextmanager
def provider_sandbox() -> Iterator[Any]:
    """The sandbox in this process; every provider client points at it."""
    from django.conf import settings

    from providers.sandbox.server import Sandbox

    sandbox = Sandbox()
    url = sandbox.start()
    settings.PROVIDER_MODE = "sandbox"
    settings.SANDBOX_URL = url
    settings.PROVIDER_TIMEOUT_SECONDS = 300.0  # one create carries 15,000 items the sandbox validates
    print(f"provider sandbox at {url}", flush=True)
    try:
        yield sandbox
    finally:
        sandbox.stop()


# --- setup ----------------------------------------------------------------------


@dataclass(frozen=True)
class Setup:
    cycle_id: int
    operator: Any
    approver: Any
    total_minor: int


def staff(username: str) -> Any:
    from django.contrib.auth import get_user_model
    from django.contrib.auth.models import Permission

    user_model = get_user_model()
    user = user_model.objects.create_user(username, is_staff=True)
    user.user_permissions.set(Permission.objects.filter(codename__in=PERMISSIONS))
    return user_model.objects.get(pk=user.pk)  # fresh: no stale permission cache


def create_cycle(items: int) -> Setup:
    from django.contrib.auth import get_user_model
    from django.contrib.auth.hashers import make_password

    from core.money import Money
    from payouts.models import PayoutCycle, RecipientType, WinnerSelection
    from payouts.services import winnings_fund

    operator, approver = staff("bench-operator"), staff("bench-approver")
    user_model = get_user_model()
    unusable = make_password(None)
    users = user_model.objects.bulk_create(
        (user_model(username=f"bench-winner-{n}", password=unusable) for n in range(items)), batch_size=2000
    )
    cycle = PayoutCycle.objects.create(name="Bench cycle", created_by=operator)
    WinnerSelection.objects.bulk_create(
        (
            WinnerSelection(
                cycle=cycle,
                user=user,
                amount_minor=amount_minor(n),
                currency=CURRENCY,
                recipient_type=RecipientType.EMAIL,
                recipient=f"winner{n}@example.com",  # no sandbox rule matches: paid SUCCESS
            )
            for n, user in enumerate(users)
        ),
        batch_size=2000,
    )
    total = sum(amount_minor(n) for n in range(items))
    winnings_fund(amount=Money(total, CURRENCY), reference=f"bench-cycle-{cycle.pk}")
    return Setup(cycle.pk, operator, approver, total)


# --- measuring --------------------------------------------------------------------


@dataclass(frozen=True)
class PhaseFigures:
    name: str
    items: int
    seconds: float
    queries: int
    cpu_seconds: float = 0.0  # this process: our code and the in-process sandbox
    server_cpu_seconds: float = 0.0  # the PostgreSQL backend serving this process

    @property
    def items_per_s(self) -> float:
        return self.items / self.seconds if self.seconds > 0 else 0.0

    def show(self, note: str = "") -> None:
        print(
            f"{self.name}: {self.items} items in {self.seconds:.2f} s = {self.items_per_s:.0f} items/s, "
            f"{self.queries} Django queries ({self.queries / max(self.items, 1):.1f} per item), "
            f"CPU {self.cpu_seconds:.2f} s here + {self.server_cpu_seconds:.2f} s in PostgreSQL, "
            f"peak RSS so far {peak_rss_mb():.0f} MB{note}",
            flush=True,
        )


class QueryCounter:
    """Counts and times the SQL statements Django runs on the default connection, by statement text.

    The ledger's own `ledger_post` calls go straight to psycopg (ledger/writer.py): they are not seen here.
    """

    def __init__(self) -> None:
        self.count = 0
        self.by_statement: dict[str, list[float]] = defaultdict(lambda: [0, 0.0])

    def __call__(self, execute: Callable[..., Any], sql: str, params: Any, many: bool, context: Any) -> Any:
        self.count += 1
        started = time.perf_counter()
        try:
            return execute(sql, params, many, context)
        finally:
            figures = self.by_statement[" ".join(sql.split())[:110]]
            figures[0] += 1
            figures[1] += time.perf_counter() - started

    def show(self, name: str, lines: int = 12) -> None:
        print(f"--- Django SQL of {name}, by time ---")
        ranked = sorted(self.by_statement.items(), key=lambda kv: kv[1][1], reverse=True)
        for statement, (count, seconds) in ranked[:lines]:
            print(f"{seconds:8.2f} s {count:7d}x  {statement}")


def measure(name: str, items: int, func: Callable[[], T]) -> tuple[T, PhaseFigures]:
    from django.db import connection

    counter = QueryCounter()
    profiler = cProfile.Profile() if name in PROFILED else None
    server_cpu = backend_cpu_seconds()
    with connection.execute_wrapper(counter):
        started, cpu = time.perf_counter(), time.process_time()
        if profiler is not None:
            result = profiler.runcall(func)
        else:
            result = func()
        seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
    figures = PhaseFigures(name, items, seconds, counter.count, cpu, backend_cpu_seconds() - server_cpu)
    figures.show(" (under cProfile)" if profiler is not None else "")
    if profiler is not None:
        counter.show(name)
        print_profile(name, profiler)
    return result, figures


def backend_cpu_seconds() -> float:
    """CPU time of the PostgreSQL backend behind Django's connection, from /proc (0 when it is elsewhere)."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        (pid,) = cursor.fetchone()
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def print_profile(name: str, profiler: cProfile.Profile) -> None:
    for sort in ("cumulative", "tottime"):
        out = io.StringIO()
        stats = pstats.Stats(profiler, stream=out).strip_dirs().sort_stats(sort)
        stats.print_stats(PROFILE_LINES)
        print(f"--- profile of {name}, by {sort} ---")
        print(out.getvalue().split("\n", 4)[-1].rstrip(), flush=True)  # without pstats' banner lines


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


# --- phases -------------------------------------------------------------------------


def tick_until_final(sandbox: Any, provider_batch_id: str) -> int:
    """Advance the sandbox until none of the batch's items is PENDING; returns the ticks taken."""
    from providers.sandbox.paypal import paypal_sandbox

    paypal = paypal_sandbox(sandbox)
    for ticks in range(1, MAX_TICKS + 1):
        sandbox.tick()
        with sandbox.lock:
            batch = paypal.batches[provider_batch_id]
            waiting = sum(1 for item_id in batch.item_ids if paypal.items[item_id].status == "PENDING")
        if not waiting and batch.status != "PROCESSING":
            return ticks
    raise SystemExit(f"the sandbox still has {waiting} pending items after {MAX_TICKS} ticks")


def run_phases(server: Server, sandbox: Any, setup: Setup) -> tuple[dict[str, PhaseFigures], int]:
    from payouts.models import PayoutBatch
    from payouts.services import batch_approve, batch_execute, batch_sync, cycle_prepare

    checkpoint(server)
    batches, prepare = measure("prepare", ITEMS, lambda: cycle_prepare(cycle_id=setup.cycle_id, actor=setup.operator))
    if len(batches) != 1 or batches[0].item_count != ITEMS:
        raise SystemExit(f"expected one batch of {ITEMS} items, got {[(b.pk, b.item_count) for b in batches]}")
    batch = batches[0]
    if batch.status == PayoutBatch.Status.PREPARED:
        batch = batch_approve(batch_id=batch.pk, approver=setup.approver)
    print(f"batch {batch.sender_batch_id}: {batch.status}, total {batch.total_minor} minor {batch.currency}")

    checkpoint(server)
    batch, submit = measure("submit", ITEMS, lambda: batch_execute(batch_id=batch.pk, actor=setup.operator))
    if batch.status != PayoutBatch.Status.SUBMITTED:
        raise SystemExit(f"batch {batch.sender_batch_id} is {batch.status} after execute: {batch.failure_reason}")

    started = time.perf_counter()
    ticks = tick_until_final(sandbox, batch.provider_batch_id)
    provider = PhaseFigures("provider", ITEMS, time.perf_counter() - started, 0)  # the sandbox's own work
    print(f"sandbox: every item final after {ticks} ticks, {provider.seconds:.2f} s", flush=True)

    checkpoint(server)
    from django.conf import settings

    if "settle" in PROFILED:  # cProfile sees one thread: apply the pages one at a time
        settings.PAYOUT_SETTLE_APPLIERS = 1
    elif "BENCH_APPLIERS" in os.environ:
        settings.PAYOUT_SETTLE_APPLIERS = int(os.environ["BENCH_APPLIERS"])
    batch, settle = measure("settle", ITEMS, lambda: batch_sync(batch_id=batch.pk))
    return {"prepare": prepare, "submit": submit, "provider": provider, "settle": settle}, batch.pk


# --- checks ---------------------------------------------------------------------------


def check(sandbox: Any, setup: Setup, batch_id: int) -> bool:
    from django.db.models import Count

    from ledger.integrity import ledger_integrity_report
    from ledger.models import Account, Hold
    from ledger.selectors import account_balance
    from payouts.models import PayoutBatch, PayoutItem

    batch = PayoutBatch.objects.get(pk=batch_id)
    statuses = dict(PayoutItem.objects.filter(batch=batch).values_list("status").annotate(n=Count("pk")))
    holds = Hold.objects.filter(pk__in=PayoutItem.objects.filter(batch=batch).values("hold_id"))
    posted_holds = holds.filter(status=Hold.Status.POSTED).count()
    payable = account_balance(Account.objects.get(code=f"payouts:winnings-payable:{CURRENCY}"))
    creates = sandbox.calls["paypal.payouts.create"]
    report = ledger_integrity_report()
    results = {
        f"batch completed ({batch.status})": batch.status == PayoutBatch.Status.COMPLETED,
        f"{ITEMS} items SUCCESS ({statuses})": statuses == {PayoutItem.Status.SUCCESS: ITEMS},
        f"{ITEMS} holds posted ({posted_holds})": posted_holds == ITEMS,
        f"payable fully paid out (posted {payable.posted.minor}, pending out {payable.pending_out.minor})": (
            payable.posted.minor == 0 and payable.pending_out.minor == 0
        ),
        f"one PayPal create ({creates})": creates == 1,
        f"ledger_integrity_report() clean ({report.checked_summary()})": report.is_clean,
    }
    for finding in report.findings[:10]:
        print(f"check: FINDING {finding}")
    for label, ok in results.items():
        print(f"check: {label}: {'ok' if ok else 'FAILED'}")
    return all(results.values())


# --- main -------------------------------------------------------------------------------


def run(server: Server, dbname: str) -> tuple[dict[str, PhaseFigures], bool]:
    django_setup(server.url(dbname))
    from django.core.management import call_command

    started = time.monotonic()
    call_command("migrate", verbosity=0)
    print(f"migrated {dbname} in {time.monotonic() - started:.1f} s", flush=True)
    with provider_sandbox() as sandbox:
        started = time.monotonic()
        setup = create_cycle(ITEMS)
        print(f"created a cycle of {ITEMS} winners and funded it in {time.monotonic() - started:.1f} s", flush=True)
        figures, batch_id = run_phases(server, sandbox, setup)
        return figures, check(sandbox, setup, batch_id)


def main() -> int:
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))  # run the cleanup on kill too
    server = Server.from_url(os.environ.get("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/postgres"))
    started = time.monotonic()
    with bench_database(server, "payout_batch") as dbname:
        figures, ok = run(server, dbname)
    print(f"total {time.monotonic() - started:.0f} s (with setup and migrations)")
    end_to_end = sum(phase.seconds for phase in figures.values())
    print(
        f"prepare through every item final and posted: {end_to_end:.2f} s = "
        + " + ".join(f"{name} {phase.seconds:.2f} s" for name, phase in figures.items())
    )
    print(
        f"payout_batch items={ITEMS} prepare_items_per_s={figures['prepare'].items_per_s:.0f} "
        f"submit_items_per_s={figures['submit'].items_per_s:.0f} "
        f"settle_items_per_s={figures['settle'].items_per_s:.0f} total_seconds={end_to_end:.2f} "
        f"peak_rss_mb={peak_rss_mb():.0f}",
        flush=True,
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
