"""Admin changelists and the dashboard over 1,000,000 rows per table: p50/p95 latency (DESIGN.md section 13).

Usage:
    DATABASE_URL=postgres://postgres@127.0.0.1:5432/backoffice .venv/bin/python bench/admin.py [--rows N] [--keep]

DATABASE_URL only says which server to use: the script creates its own database (backoffice_bench_admin),
migrates it, and drops it at the end, even on failure (--keep leaves it for a look; --reuse measures a kept
database again without building it, after migrating it, so new index migrations are applied to the big tables).

Setup (not measured): --rows N (default 1,000,000) of each kind, built set-based in the database by
bench/admin_build.py (its docstring says what), then VACUUM ANALYZE and the charts' rollup.

Measured, with Django's test client signed in as a superuser (force_login), each page BENCH_REPEAT times
(default 20) after a warm-up: the changelists of ledger transactions (the ledger's list; its entries are
shown on each transaction's page), payout items, webhook events and payments, each default, filtered (a
list_filter value), searched (an identifier) and sorted (a date column, newest first); and the dashboard
(/admin/) with each of its sections (/admin/dashboard/<name>/). For a page whose p95 is over the aim
(300 ms) the script shows where the time goes: its SQL queries, the slowest ones, and the plan of the slowest.

The last line is machine-readable:
    admin rows=1000000 changelist_p95_ms=N dashboard_p95_ms=N
(the worst p95 over every changelist variant, and over the dashboard page and its sections).
"""

from __future__ import annotations

import argparse
import math
import os
import re
import signal
import statistics
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
# Keep bench/ off sys.path, like the other benchmarks (bench/ledger.py would shadow the `ledger` app).
sys.path[:] = [str(ROOT)] + [p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"]

from bench.admin_build import build  # noqa: E402
from bench.benchdb import Server, close_django_connections, create_database, django_setup, drop_database  # noqa: E402

DBNAME = "backoffice_bench_admin"
AIM_MS = 300.0
REPEAT = int(os.environ.get("BENCH_REPEAT", "20"))
SLOWEST_SHOWN = 3


# --- the database -----------------------------------------------------------------------------------


@contextmanager
def admin_database(server: Server, *, keep: bool, reuse: bool) -> Iterator[str]:
    """The bench database: made afresh (or, with reuse, the kept one), dropped afterwards unless kept."""
    if not reuse:
        drop_database(server, DBNAME)
        create_database(server, DBNAME)
    try:
        yield DBNAME
    finally:
        close_django_connections()
        if keep or reuse:
            print(f"kept database {DBNAME}", flush=True)
        else:
            drop_database(server, DBNAME)
            print(f"dropped database {DBNAME}", flush=True)


# --- measuring ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Page:
    group: str  # "changelist" or "dashboard"
    label: str
    url: str
    params: dict[str, str]
    expect_rows: str = ""  # changelists: "some", "one" or "page" (a full page)


@dataclass(frozen=True)
class Figures:
    page: Page
    samples: list[float]  # milliseconds

    @property
    def p50(self) -> float:
        return statistics.median(self.samples)

    @property
    def p95(self) -> float:
        ordered = sorted(self.samples)
        return ordered[max(0, math.ceil(0.95 * len(ordered)) - 1)]  # nearest rank


@dataclass(frozen=True)
class Changelist:
    """One changelist and its variants: a list_filter value, an identifier to search, a date column to sort by."""

    label: str
    model: str  # app_label.ModelName
    filter: dict[str, str]
    search: str
    sort_by: str


def changelists(rows: int) -> list[Changelist]:
    middle = max(1, rows // 2)
    return [
        Changelist("ledger transactions", "ledger.Transaction", {"kind__exact": "payout"}, f"bench:{middle}",
                   "event_at"),
        Changelist("payout items", "payouts.PayoutItem", {"status__exact": "FAILED"}, f"item-{middle}", "updated_at"),
        Changelist("webhook events", "providers.WebhookEvent", {"status__exact": "failed"},
                   f"evt_{middle:012d}", "created_at"),
        Changelist("payments", "providers.Payment", {"status__exact": "failed"}, f"pay_{middle:012d}", "created_at"),
    ]  # fmt: skip


def sort_param(model_admin: Any, user: Any, field: str) -> str:
    """The changelist's `o` for `field`, newest first: its position among the columns (after the checkbox)."""
    from django.test import RequestFactory

    request = RequestFactory().get("/")
    request.user = user
    columns = list(model_admin.get_list_display(request))
    if model_admin.get_actions(request):
        columns = ["action_checkbox", *columns]
    if field not in columns:
        raise SystemExit(f"{model_admin}: no column {field!r} to sort by in {columns}")
    return f"-{columns.index(field)}"


def pages(rows: int, user: Any) -> list[Page]:
    from django.apps import apps
    from django.contrib import admin
    from django.urls import reverse

    from monitoring.admin_views import sections_for

    found: list[Page] = []
    for cl in changelists(rows):
        model = apps.get_model(cl.model)
        url = reverse(f"admin:{model._meta.app_label}_{model._meta.model_name}_changelist")
        order = sort_param(admin.site._registry[model], user, cl.sort_by)
        found += [
            Page("changelist", f"{cl.label}: default", url, {}, "page"),
            Page("changelist", f"{cl.label}: filtered {cl.filter}", url, cl.filter, "some"),
            Page("changelist", f"{cl.label}: searched {cl.search!r}", url, {"q": cl.search}, "one"),
            Page("changelist", f"{cl.label}: sorted by {cl.sort_by}, newest first (o={order})", url, {"o": order},
                 "page"),
        ]  # fmt: skip
    found.append(Page("dashboard", "dashboard /admin/", reverse("admin:index"), {}))
    for section in sections_for(user):
        url = reverse("dashboard:section", args=[section.name])
        found.append(Page("dashboard", f"dashboard section {section.name}", url, {}))
    return found


_RESULTS = re.compile(r'<table id="result_list">(.*?)</table>', re.DOTALL)


def shown_rows(html: str) -> int:
    table = _RESULTS.search(html)
    return 0 if table is None else table.group(1).count("<tr") - 1  # less the header row


def check_page(page: Page, response: Any, per_page: int = 100) -> str:
    """A page measured must be the page meant: 200, and for a changelist the rows it should show."""
    if response.status_code != 200:
        raise SystemExit(f"{page.label}: HTTP {response.status_code} for {page.url} {page.params}")
    if not page.expect_rows:
        return ""
    html = response.content.decode()
    rows = shown_rows(html)
    wanted = {"page": rows == per_page, "one": rows == 1, "some": rows > 0}[page.expect_rows]
    if not wanted:
        raise SystemExit(f"{page.label}: {rows} rows shown, expected {page.expect_rows}")
    return f"{rows} rows"


def measure(client: Any, page: Page, repeat: int) -> Figures:
    check = check_page(page, client.get(page.url, page.params))  # the warm-up
    samples = []
    for _ in range(repeat):
        started = time.perf_counter()
        response = client.get(page.url, page.params)
        samples.append((time.perf_counter() - started) * 1000)
        if response.status_code != 200:
            raise SystemExit(f"{page.label}: HTTP {response.status_code}")
    figures = Figures(page, samples)
    print(f"  {page.label:<78} p50={figures.p50:6.1f} ms  p95={figures.p95:6.1f} ms  {check}", flush=True)
    return figures


def where_time_goes(client: Any, page: Page) -> None:
    """One more request with its SQL recorded: the queries' share, the slowest ones and the slowest one's plan."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    with CaptureQueriesContext(connection) as captured:
        started = time.perf_counter()
        client.get(page.url, page.params)
        total = (time.perf_counter() - started) * 1000
    queries = [(float(q["time"]) * 1000, q["sql"]) for q in captured.captured_queries]
    in_sql = sum(ms for ms, _ in queries)
    print(f"    where the time goes ({page.label}): {total:.0f} ms, of which {len(queries)} queries "
          f"{in_sql:.0f} ms, the rest (Python, templates) {total - in_sql:.0f} ms", flush=True)  # fmt: skip
    slowest = sorted(queries, key=lambda q: q[0], reverse=True)[:SLOWEST_SHOWN]
    for ms, statement in slowest:
        print(f"      {ms:7.1f} ms  {statement[:300]}")
    if slowest and slowest[0][0] > AIM_MS / 10:
        with connection.cursor() as cursor:
            cursor.execute("EXPLAIN (ANALYZE, BUFFERS) " + slowest[0][1])
            plan = [row[0] for row in cursor.fetchall()]
        for line in plan[:25]:
            print(f"        {line}")
    sys.stdout.flush()


def run_pages(rows: int, repeat: int) -> tuple[float, float]:
    from django.contrib.auth import get_user_model
    from django.test import Client

    user = get_user_model().objects.get(username="bench-admin")
    client = Client()
    client.force_login(user)
    found: list[Figures] = []
    for page in pages(rows, user):
        found.append(measure(client, page, repeat))
    slow = [f for f in found if f.p95 > AIM_MS]
    if slow:
        print(f"pages over the aim of {AIM_MS:.0f} ms at p95: {len(slow)}", flush=True)
    for figures in slow:
        where_time_goes(client, figures.page)
    worst = {group: max((f.p95 for f in found if f.page.group == group), default=0.0) for group in
             ("changelist", "dashboard")}  # fmt: skip
    return worst["changelist"], worst["dashboard"]


# --- main -----------------------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000, help="rows of each kind (default 1,000,000)")
    parser.add_argument("--keep", action="store_true", help=f"keep the database {DBNAME} afterwards")
    parser.add_argument("--reuse", action="store_true", help=f"measure the kept {DBNAME} again without building")
    parser.add_argument("--repeat", type=int, default=REPEAT, help=f"requests per page after the warm-up ({REPEAT})")
    args = parser.parse_args()
    if args.rows < 1000 or args.repeat < 1:
        raise SystemExit("--rows must be at least 1000 and --repeat at least 1")
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))  # run the cleanup on kill too
    server = Server.from_url(os.environ.get("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/postgres"))
    started = time.monotonic()
    with admin_database(server, keep=args.keep, reuse=args.reuse) as dbname:
        django_setup(server.url(dbname))
        from django.core.management import call_command

        migrate_started = time.monotonic()
        call_command("migrate", verbosity=0)
        print(f"migrated {dbname} in {time.monotonic() - migrate_started:.1f} s", flush=True)
        if not args.reuse:
            build(args.rows)
        print(f"measuring: {args.repeat} requests per page after a warm-up", flush=True)
        changelist_p95, dashboard_p95 = run_pages(args.rows, args.repeat)
    print(f"total {time.monotonic() - started:.0f} s")
    print(f"admin rows={args.rows} changelist_p95_ms={changelist_p95:.0f} dashboard_p95_ms={dashboard_p95:.0f}",
          flush=True)  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
