"""Ledger posting throughput against pgbench, on the same PostgreSQL server (DESIGN.md section 13).

Usage:
    DATABASE_URL=postgres://postgres@127.0.0.1:5432/backoffice .venv/bin/python bench/ledger.py

DATABASE_URL only says which server to use: the script creates its own database
(bench_ledger_<pid>), migrates it, and drops it at the end, even on failure.

Phases, each printed as it finishes:
1. 1000 user wallets (liability, USD, never negative) funded from one
   funding account, and one hot revenue account (both allowed to go negative);
2. 8 worker processes post `transaction_post` transfers for BENCH_SECONDS per mode,
   in BENCH_ROUNDS alternating slices:
   "uniform" moves a small amount between two random user wallets,
   "hot" moves a small amount from a random user wallet to the hot account;
3. pgbench's TPC-B-like script with 8 clients on the same server;
4. an integrity check of the ledger the run wrote.

Before the workers, this process alone posts through the batched service for BENCH_BATCH_SECONDS
(default 10) of calls: `transactions_post_many` calls of BENCH_BATCH_SIZE (default 1000) uniform
transfers, each its own transaction and key, one commit per call; the figure is entries per second
of call time (building each call's random requests is not timed).

The last line is machine-readable:
    ledger uniform_tps=N hot_tps=N batch_entries_per_s=N pgbench_tps=N uniform_vs_pgbench=R hot_vs_uniform=R
"""

from __future__ import annotations

import multiprocessing as mp
import os
import queue
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from multiprocessing.synchronize import Barrier
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
# This file is bench/ledger.py: keep its folder off sys.path, or `import ledger` would import this script.
sys.path[:] = [str(ROOT)] + [p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"]

from bench.benchdb import Server, bench_database, checkpoint, close_django_connections, django_setup  # noqa: E402 - needs the path above

WORKERS = int(os.environ.get("BENCH_WORKERS", "8"))
SECONDS = float(os.environ.get("BENCH_SECONDS", "20"))
USERS = int(os.environ.get("BENCH_USERS", "1000"))
MODES = ("uniform", "hot")
# The batched service: one process posting BATCH_SIZE transfers per `transactions_post_many` call.
BATCH_SIZE = int(os.environ.get("BENCH_BATCH_SIZE", "1000"))
BATCH_SECONDS = float(os.environ.get("BENCH_BATCH_SECONDS", "10"))
# Each mode runs in ROUNDS slices, alternating (uniform, hot, uniform, hot): load from other
# processes on this small machine then weighs on both modes alike.
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "2"))
SLICES = [(round_, mode) for round_ in range(ROUNDS) for mode in MODES]
CURRENCY = "USD"
FUNDING_CODE = "bench:funding:USD"
HOT_CODE = "bench:hot-revenue:USD"
USER_FUNDING_MINOR = 1_000_000_000  # far above what 20 s of 1..100-cent transfers can take out
MAX_TRANSFER_MINOR = 100


def user_code(index: int) -> str:
    return f"bench:user:{index}:wallet:USD"


# --- the database -------------------------------------------------------------


# --- accounts -----------------------------------------------------------------


def create_accounts(users: int) -> None:
    from core.money import Money
    from ledger.services import account_create, credit, debit, transaction_post

    account_create(code=FUNDING_CODE, name="Bench funding", type="asset", currency=CURRENCY, allow_negative=True)
    account_create(code=HOT_CODE, name="Bench hot revenue", type="revenue", currency=CURRENCY, allow_negative=True)
    for index in range(users):
        account_create(code=user_code(index), name=f"Bench user {index}", type="liability", currency=CURRENCY)
    # One posting funds every wallet: debit the funding asset, credit each user liability.
    each = Money(USER_FUNDING_MINOR, CURRENCY)
    legs = [debit(FUNDING_CODE, Money(USER_FUNDING_MINOR * users, CURRENCY))]
    legs += [credit(user_code(index), each) for index in range(users)]
    transaction_post(idempotency_key="bench:funding", kind="bench.funding", legs=legs)


# --- workers ------------------------------------------------------------------


@dataclass(frozen=True)
class WorkerResult:
    mode: str
    worker: int
    posted: int
    failed: int
    started: float
    ended: float
    first_error: str


def pick_legs(mode: str, rng: random.Random, users: int) -> list[Any]:
    from core.money import Money
    from ledger.services import credit, debit

    amount = Money(rng.randint(1, MAX_TRANSFER_MINOR), CURRENCY)
    source = rng.randrange(users)
    if mode == "hot":
        target = HOT_CODE
    else:
        target = user_code((source + rng.randrange(1, users)) % users)  # any other user
    return [debit(user_code(source), amount), credit(target, amount)]


def post_for(mode: str, round_: int, worker: int, seconds: float, users: int) -> WorkerResult:
    from ledger.services import transaction_post

    rng = random.Random(f"{mode}:{round_}:{worker}")
    posted = failed = 0
    first_error = ""
    started = time.time()
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        legs = pick_legs(mode, rng, users)
        try:
            transaction_post(
                idempotency_key=f"bench:{mode}:{round_}:{worker}:{posted + failed}", kind=f"bench.{mode}", legs=legs
            )
            posted += 1
        except Exception as error:  # count every failure, keep going
            failed += 1
            first_error = first_error or f"{type(error).__name__}: {error}"
    return WorkerResult(mode, worker, posted, failed, started, time.time(), first_error)


def worker_main(database_url: str, worker: int, barrier: Barrier, results: Any) -> None:
    django_setup(database_url)
    from django.db import connection

    connection.ensure_connection()  # connect before the barrier: measure postings, not connects
    for round_, mode in SLICES:
        barrier.wait(timeout=120)
        results.put(post_for(mode, round_, worker, SECONDS / ROUNDS, USERS))
    connection.close()


@dataclass(frozen=True)
class ModeFigures:
    mode: str
    posted: int
    failed: int
    seconds: float

    @property
    def tps(self) -> float:
        return self.posted / self.seconds if self.seconds > 0 else 0.0

    def __add__(self, other: ModeFigures) -> ModeFigures:
        posted, failed = self.posted + other.posted, self.failed + other.failed
        return ModeFigures(self.mode, posted, failed, self.seconds + other.seconds)

    def show(self, label: str) -> None:
        print(
            f"ledger {label}: {self.posted} postings in {self.seconds:.1f} s = {self.tps:.0f}/s "
            f"({WORKERS} workers, {self.failed} failed)",
            flush=True,
        )


def summarize(mode: str, results: list[WorkerResult]) -> ModeFigures:
    """One slice: the wall time runs from the first worker's start to the last worker's end."""
    wall = max(r.ended for r in results) - min(r.started for r in results)
    figures = ModeFigures(mode, sum(r.posted for r in results), sum(r.failed for r in results), wall)
    for error in sorted({r.first_error for r in results if r.first_error}):
        print(f"  failure: {error}", flush=True)
    return figures


def collect(results: Any, processes: list[Any]) -> list[WorkerResult]:
    """One result per worker; stop at once if a worker died, rather than wait for it."""
    collected: list[WorkerResult] = []
    deadline = time.monotonic() + SECONDS / ROUNDS + 180
    while len(collected) < len(processes):
        try:
            collected.append(results.get(timeout=1))
        except queue.Empty:
            dead = [p.exitcode for p in processes if p.exitcode not in (None, 0)]
            if dead or time.monotonic() > deadline:
                raise SystemExit(f"a worker failed or hung: exit codes {[p.exitcode for p in processes]}") from None
    return collected


def run_workers(server: Server, database_url: str) -> dict[str, ModeFigures]:
    """Run every slice in the same 8 processes, each slice starting on a barrier; add up slices per mode."""
    close_django_connections()  # the parent's connection must not be shared with the children
    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(WORKERS)
    results = ctx.Queue()
    processes = [
        ctx.Process(target=worker_main, args=(database_url, n, barrier, results), daemon=True) for n in range(WORKERS)
    ]
    figures = {mode: ModeFigures(mode, 0, 0, 0.0) for mode in MODES}
    try:
        for process in processes:
            process.start()
        for round_, mode in SLICES:
            slice_figures = summarize(mode, collect(results, processes))
            slice_figures.show(f"{mode} (slice {round_ + 1}/{ROUNDS})")
            figures[mode] += slice_figures
        for mode in MODES:
            figures[mode].show(f"{mode} total")
        for process in processes:
            process.join(timeout=30)
    finally:
        for process in processes:
            if process.is_alive():
                process.terminate()
                process.join(timeout=5)
    if any(process.exitcode != 0 for process in processes):
        raise SystemExit(f"a worker failed: exit codes {[p.exitcode for p in processes]}")
    return figures


# --- batches ------------------------------------------------------------------


@dataclass(frozen=True)
class BatchFigures:
    batches: int
    transactions: int
    entries: int
    seconds: float
    cpu_seconds: float

    @property
    def entries_per_s(self) -> float:
        return self.entries / self.seconds if self.seconds > 0 else 0.0

    def show(self) -> None:
        print(
            f"ledger batches: {self.batches} calls of {BATCH_SIZE} transfers, {self.transactions} transactions, "
            f"{self.entries} entries in {self.seconds:.1f} s = {self.entries_per_s:.0f} entries/s "
            f"({self.transactions / self.seconds:.0f} transactions/s; one process, one connection; "
            f"CPU {self.cpu_seconds:.1f} s here)",
            flush=True,
        )


def run_batches(seconds: float) -> BatchFigures:
    """`transactions_post_many` from this one process for `seconds` of calls: each call BATCH_SIZE transfers
    between random user wallets (two entries each, its own key), every call one commit. Only the calls are
    timed: the bench builds each call's requests (random legs) before the clock starts."""
    from django.db.models import Count

    from ledger.models import Entry
    from ledger.services import transactions_post_many

    rng = random.Random("batches")
    entries_before = Entry.objects.count()
    batches = 0
    elapsed = cpu = 0.0
    while elapsed < seconds:
        requests = [batch_request(rng, f"bench:batch:{batches}:{n}") for n in range(BATCH_SIZE)]
        started, cpu_started = time.monotonic(), time.process_time()
        transactions_post_many(requests=requests)
        elapsed += time.monotonic() - started
        cpu += time.process_time() - cpu_started
        batches += 1
    entries = Entry.objects.count() - entries_before
    posted = Entry.objects.filter(transaction__kind="bench.batch").aggregate(n=Count("transaction", distinct=True))
    figures = BatchFigures(batches, posted["n"], entries, elapsed, cpu)
    figures.show()
    return figures


def batch_request(rng: random.Random, key: str) -> Any:
    from ledger.services import PostingRequest

    return PostingRequest(key, "bench.batch", pick_legs("uniform", rng, USERS))


# --- pgbench ------------------------------------------------------------------

_TPS = re.compile(r"^tps = ([0-9.]+) \(without initial connection time\)", re.MULTILINE)


def pgbench(server: Server, *args: str) -> str:
    """Run pgbench with fixed arguments built here (no user input) and return its output."""
    executable = shutil.which("pgbench")
    if executable is None:
        raise SystemExit("pgbench not found: apt-get install postgresql-client")
    done = subprocess.run([executable, *args], env=server.pg_env(), check=True, capture_output=True, text=True)  # noqa: S603
    return done.stdout + done.stderr


def run_pgbench(server: Server, dbname: str, seconds: int) -> float:
    pgbench(server, "-i", "-s", "8", "-q", dbname)
    checkpoint(server)
    output = pgbench(server, "-c", str(WORKERS), "-j", "2", "-T", str(seconds), dbname)
    match = _TPS.search(output)
    if match is None:
        raise SystemExit(f"no tps in pgbench output:\n{output}")
    tps = float(match.group(1))
    print(f"pgbench TPC-B-like: {tps:.0f} tps (-c {WORKERS} -j 2 -T {seconds}, scale 8)", flush=True)
    return tps


# --- integrity ----------------------------------------------------------------

_ENTRY_SUMS_SQL = """
SELECT currency, COUNT(*), COALESCE(SUM(amount_minor) FILTER (WHERE amount_minor > 0), 0),
       COALESCE(SUM(amount_minor), 0)
  FROM ledger_entry GROUP BY currency ORDER BY currency
"""

# Per account: the balance rows against the entries, in the account's normal direction.
_BALANCE_MISMATCH_SQL = """
WITH sums AS (
    SELECT e.account_id, SUM(e.amount_minor) AS debit_positive, COUNT(*) AS entries
      FROM ledger_entry e GROUP BY e.account_id
), rows AS (
    SELECT account_id, SUM(posted_minor) AS posted, SUM(version) AS versions
      FROM ledger_balance GROUP BY account_id
)
SELECT a.code, r.posted, COALESCE(s.debit_positive, 0), r.versions, COALESCE(s.entries, 0)
  FROM ledger_account a JOIN rows r ON r.account_id = a.id LEFT JOIN sums s ON s.account_id = a.id
 WHERE r.posted <> COALESCE(s.debit_positive, 0) * CASE WHEN a.type IN ('asset', 'expense') THEN 1 ELSE -1 END
    OR r.versions <> COALESCE(s.entries, 0)
"""


# Per shard, ordered by version: versions run 1, 2, 3... and each balance-after is the previous one plus the entry.
_BROKEN_CHAINS_SQL = """
SELECT COUNT(*) FROM (
    SELECT e.version_after, e.balance_after_minor,
           e.amount_minor * CASE WHEN a.type IN ('asset', 'expense') THEN 1 ELSE -1 END AS change,
           ROW_NUMBER() OVER w AS expected_version,
           LAG(e.balance_after_minor, 1, 0::bigint) OVER w AS previous_balance
      FROM ledger_entry e JOIN ledger_account a ON a.id = e.account_id
    WINDOW w AS (PARTITION BY e.account_id, e.shard ORDER BY e.version_after)
) chain
WHERE version_after <> expected_version OR balance_after_minor <> previous_balance + change
"""


def check_entries_and_balances() -> bool:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(_ENTRY_SUMS_SQL)
        sums = cursor.fetchall()
        cursor.execute(_BALANCE_MISMATCH_SQL)
        mismatches = cursor.fetchall()
        cursor.execute(_BROKEN_CHAINS_SQL)
        (broken_chains,) = cursor.fetchone()
    for currency, count, debits, total in sums:
        print(f"integrity: {currency} {count} entries, debits {debits}, credits {debits - total}, sum {total}")
    for code, posted, entries_sum, versions, entries in mismatches[:10]:
        print(f"integrity: MISMATCH {code}: balance {posted} v{versions}, entries sum {entries_sum} n={entries}")
    print(f"integrity: {broken_chains} entries break their shard's version/balance-after chain")
    ok = all(total == 0 for *_, total in sums) and not mismatches and broken_chains == 0
    print(f"integrity: entries sum to zero, chains and balance rows match: {'ok' if ok else 'FAILED'}", flush=True)
    return ok


def check_integrity() -> bool:
    ok = check_entries_and_balances()
    if not (ROOT / "ledger" / "integrity.py").exists():
        print("integrity: ledger/integrity.py not there yet; only the checks above ran", flush=True)
        return ok
    from ledger.integrity import ledger_integrity_report

    report = ledger_integrity_report()
    print(f"integrity: ledger_integrity_report() checked {report.checked_summary()}")
    for finding in report.findings[:10]:
        print(f"integrity: FINDING {finding}")
    print(f"integrity: ledger_integrity_report(): {'ok' if report.is_clean else 'FAILED'}", flush=True)
    return ok and report.is_clean


# --- main -----------------------------------------------------------------------


def run(server: Server, dbname: str) -> tuple[dict[str, ModeFigures], BatchFigures, float, bool]:
    database_url = server.url(dbname)
    django_setup(database_url)
    from django.core.management import call_command

    started = time.monotonic()
    call_command("migrate", verbosity=0)
    print(f"migrated {dbname} in {time.monotonic() - started:.1f} s", flush=True)
    started = time.monotonic()
    create_accounts(USERS)
    print(f"created and funded {USERS} user accounts in {time.monotonic() - started:.1f} s", flush=True)
    checkpoint(server)
    batch = run_batches(BATCH_SECONDS)
    checkpoint(server)
    figures = run_workers(server, database_url)
    pgbench_tps = run_pgbench(server, dbname, round(SECONDS))
    return figures, batch, pgbench_tps, check_integrity()


def ratio(numerator: float, denominator: float) -> float:
    return numerator / denominator if denominator else 0.0


def main() -> int:
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))  # run the cleanup on kill too
    server = Server.from_url(os.environ.get("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/postgres"))
    started = time.monotonic()
    with bench_database(server, "ledger") as dbname:
        figures, batch, pgbench_tps, ok = run(server, dbname)
    uniform, hot = figures["uniform"].tps, figures["hot"].tps
    print(f"total {time.monotonic() - started:.0f} s")
    print(
        f"ledger uniform_tps={uniform:.0f} hot_tps={hot:.0f} batch_entries_per_s={batch.entries_per_s:.0f} "
        f"pgbench_tps={pgbench_tps:.0f} uniform_vs_pgbench={ratio(uniform, pgbench_tps):.2f} "
        f"hot_vs_uniform={ratio(hot, uniform):.2f}",
        flush=True,
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
