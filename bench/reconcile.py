"""Daily reconciliation of 250k, 500k and 1M postings: seconds and peak memory (DESIGN.md section 13).

Usage:
    DATABASE_URL=postgres://postgres@127.0.0.1:5432/backoffice .venv/bin/python bench/reconcile.py

DATABASE_URL only says which server to use: for each size the script creates its own database
(bench_reconcile_<pid>), migrates it, and drops it at the end, even on failure.

Per size (BENCH_SIZES, default 250000,500000,1000000):
1. setup, not measured, in a child process: migrate; the clearing and customer-payments accounts; N ledger
   transactions on one UTC day, generated set-based (INSERT ... SELECT generate_series) with two entries
   each and metadata {"provider": "stripe", "provider_reference": "pi_bench..."}; the ledger's deferred
   zero-sum triggers stay on (every transaction balances). Every 89th reference is posted twice (duplicate);
2. measured, in a fresh child process: `reconciliation_run` for the day, fed a provider report of the same
   size as a generator of 100-row pages, exactly what the Stripe client yields page by page (1M rows do not
   go over HTTP: the sandbox path is the one the tests cover, the streaming path after it is the same).
   Seeded mismatches: every 97th reference missing at the provider, every 50th off by one cent, plus N/100
   provider rows nobody posted. No record sources (they are the tests' business), so no records side.
   The child reports its wall time for the run and `ru_maxrss` (its peak RSS, Django loaded included).

The last line is machine-readable:
    reconcile rows=1000000 seconds=N peak_rss_mb=N time_growth_250k_to_1m=R
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:] = [str(ROOT)] + [p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"]

from bench.benchdb import Server, bench_database, django_setup  # noqa: E402 - needs the path above

SIZES = [int(size) for size in os.environ.get("BENCH_SIZES", "250000,500000,1000000").split(",")]
DAY = date(2026, 1, 15)
CLEARING, OWED = "provider:stripe:clearing:USD", "platform:customer-payments:USD"
PAGE = 100  # Stripe's largest page


def amount_of(i: int) -> int:
    return 1_000 + (i * 7_919) % 100_000


def reference_of(i: int) -> str:
    return f"pi_bench{i:09d}"


# --- setup (child process, not measured) ----------------------------------------------------------

GENERATE_SQL = """
INSERT INTO ledger_transaction (idempotency_key, request_hash, kind, description, metadata, event_at, created_at)
SELECT %(prefix)s || i, '', 'customer_payment', '',
       jsonb_build_object('provider', 'stripe', 'provider_reference', 'pi_bench' || lpad(i::text, 9, '0')),
       %(day)s::timestamptz + make_interval(secs => i %% 86400), now()
FROM generate_series(1, %(n)s) AS i WHERE i %% %(every)s = 0;

INSERT INTO ledger_entry (transaction_id, account_id, shard, amount_minor, currency, balance_after_minor,
                          version_after, created_at)
SELECT t.id, side.account_id, 0, side.sign * (1000 + (k.i * 7919) %% 100000), 'USD', 0,
       k.i + %(version_offset)s, t.created_at
FROM ledger_transaction t
CROSS JOIN LATERAL (SELECT CAST(substr(t.idempotency_key, length(%(prefix)s) + 1) AS bigint) AS i) AS k
CROSS JOIN (VALUES (%(clearing)s, 1), (%(owed)s, -1)) AS side(account_id, sign)
WHERE t.idempotency_key LIKE %(prefix)s || '%%';
"""


def setup(size: int) -> None:
    from django.core.management import call_command
    from django.db import connection, transaction

    from ledger.models import Account
    from ledger.services import account_create

    call_command("migrate", verbosity=0)
    account_create(code=CLEARING, name="Stripe clearing", type="asset", currency="USD", allow_negative=True)
    account_create(code=OWED, name="Customer payments", type="liability", currency="USD", allow_negative=True)
    ids = dict(Account.objects.filter(code__in=[CLEARING, OWED]).values_list("code", "pk"))
    day = datetime.combine(DAY, datetime.min.time(), tzinfo=UTC)
    with transaction.atomic(), connection.cursor() as cursor:
        for prefix, every, offset in (("bench:", 1, 0), ("bench-dup:", 89, size)):
            cursor.execute(GENERATE_SQL, {"prefix": prefix, "every": every, "version_offset": offset, "n": size,
                                          "day": day, "clearing": ids[CLEARING], "owed": ids[OWED]})  # fmt: skip
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE ledger_transaction; ANALYZE ledger_entry")


# --- the measured run (a fresh child process) ------------------------------------------------------


def provider_pages(size: int) -> Iterator[list[Any]]:
    """The provider's report of the day, page by page, as the Stripe client yields it."""
    from providers.stripe.client import BalanceMovement

    start = int(datetime.combine(DAY, datetime.min.time(), tzinfo=UTC).timestamp())
    page: list[BalanceMovement] = []

    def movement(n: int, reference: str, amount: int) -> BalanceMovement:
        return BalanceMovement(f"txn_bench{n:09d}", reference, "charge", amount, 0, amount, "USD", "pending",
                               start + n % 86_400)  # fmt: skip

    for i in range(1, size + 1):
        if i % 97 == 0:
            continue  # posted, never at the provider
        page.append(movement(i, reference_of(i), amount_of(i) + (1 if i % 50 == 0 else 0)))
        if len(page) == PAGE:
            yield page
            page = []
    for k in range(1, size // 100 + 1):  # at the provider, never posted
        page.append(movement(size + k, f"pi_extra{k:09d}", 500))
        if len(page) == PAGE:
            yield page
            page = []
    if page:
        yield page


def reconcile(size: int) -> dict[str, Any]:
    from monitoring.reconciliation import reconciliation_run

    baseline_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Django and the project loaded
    started = time.monotonic()
    run = reconciliation_run(day=DAY, provider="stripe", trigger="command", provider_pages=provider_pages(size),
                             record_sources=[])  # fmt: skip
    seconds = time.monotonic() - started
    by_kind = {kind: sum(t["count"] for t in cur.values()) for kind, cur in run.summary["by_kind"].items()}
    return {
        "seconds": round(seconds, 2),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "baseline_rss_mb": round(baseline_mb, 1),
        "phases": run.summary["seconds"],
        "ledger_rows": run.ledger_rows,
        "provider_rows": run.provider_rows,
        "matched": run.matched_count,
        "issues": run.issue_count,
        "by_kind": by_kind,
    }


def expected_issues(size: int) -> dict[str, int]:
    counts = {"duplicate": 0, "missing_at_provider": 0, "amount_mismatch": 0, "missing_in_ledger": size // 100}
    for i in range(1, size + 1):
        if i % 89 == 0:
            counts["duplicate"] += 1
        elif i % 97 == 0:
            counts["missing_at_provider"] += 1
        elif i % 50 == 0:
            counts["amount_mismatch"] += 1
    return counts


# --- orchestration -------------------------------------------------------------------------------


def child(mode: str, size: int, database_url: str) -> str:
    env = dict(os.environ, DATABASE_URL=database_url)
    command = [sys.executable, __file__, mode, str(size)]
    answer = subprocess.run(command, env=env, capture_output=True, text=True)  # noqa: S603 - our own script
    if answer.returncode != 0:
        raise SystemExit(f"{mode} {size} failed:\n{answer.stdout}\n{answer.stderr}")
    return answer.stdout.strip().splitlines()[-1] if answer.stdout.strip() else ""


def measure(server: Server, size: int) -> dict[str, Any]:
    with bench_database(server, "reconcile") as dbname:
        url = server.url(dbname)
        started = time.monotonic()
        child("--setup", size, url)
        print(f"setup rows={size} seconds={time.monotonic() - started:.1f} (not measured)", flush=True)
        result = json.loads(child("--reconcile", size, url))
    wanted = expected_issues(size)
    if result["by_kind"] != wanted:
        raise SystemExit(f"rows={size}: found {result['by_kind']}, expected {wanted}")
    print(f"reconcile rows={size} seconds={result['seconds']} peak_rss_mb={result['peak_rss_mb']} "
          f"baseline_rss_mb={result['baseline_rss_mb']} phases_seconds={result['phases']} matched={result['matched']} "
          f"issues={result['issues']} by_kind={result['by_kind']}", flush=True)  # fmt: skip
    return result


def main() -> int:
    if len(sys.argv) == 3:  # a child
        django_setup(os.environ["DATABASE_URL"])
        if sys.argv[1] == "--setup":
            setup(int(sys.argv[2]))
        else:
            print(json.dumps(reconcile(int(sys.argv[2]))), flush=True)
        return 0
    server = Server.from_url(os.environ.get("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/postgres"))
    results = {size: measure(server, size) for size in SIZES}
    first, last = results[SIZES[0]], results[SIZES[-1]]
    growth = last["seconds"] / first["seconds"] if first["seconds"] else float("nan")
    print(f"reconcile rows={SIZES[-1]} seconds={last['seconds']} peak_rss_mb={last['peak_rss_mb']} "
          f"time_growth_250k_to_1m={growth:.2f}", flush=True)  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
