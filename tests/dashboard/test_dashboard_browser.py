"""The dashboard in a real browser: Debian's chromium, driven by Playwright, against the live test server.

A finance operator signs in and lands on the dashboard; a PayPal batch is at the provider with every item
pending; the sandbox settles the items and the beat task that follows batches syncs them, while the browser
waits. The batch's progress changes on the page without the page being loaded again (the marker the page
script sets once per load survives, and the main frame navigated only for the sign-in). A screenshot is kept
in var/artifacts/dashboard.png. Needs /usr/bin/chromium: `make browser-deps` installs it.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings
from django.contrib.auth.models import User
from django.db import connections
from playwright.sync_api import expect, sync_playwright

from analytics.services import rollup_recent
from core.money import Money
from payouts.models import PayoutBatch, PayoutCycle, WinnerSelection
from payouts.services import batch_execute, cycle_prepare, winnings_fund
from payouts.tasks import sync_batches_task
from tests.dashboard.conftest import member

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

CHROMIUM = Path(os.environ.get("CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
ARTIFACTS = Path(settings.BASE_DIR) / "var" / "artifacts"
PASSWORD = "a-long-test-passphrase"


def submitted_batch(operator: User) -> PayoutBatch:
    """Four winners of $100 to $400 sent to PayPal: every item pending at the provider."""
    cycle = PayoutCycle.objects.create(name="December winners")
    for n, receiver in enumerate(["paid", "unclaimed", "fail", "return"]):
        WinnerSelection.objects.create(
            cycle=cycle, user=User.objects.create_user(f"winner-{n}"), amount_minor=10_000 * (n + 1), currency="USD",
            recipient_type="EMAIL", recipient=f"{receiver}@example.com",
        )  # fmt: skip
    winnings_fund(amount=Money(1_000_000, "USD"), reference="pool-1")
    (batch,) = cycle_prepare(cycle_id=cycle.pk, actor=operator)
    return batch_execute(batch_id=batch.pk, actor=operator)


def in_thread(work: Callable[[], Any]) -> Any:
    """Run database work beside the browser: Playwright's sync API keeps an event loop in this thread, where
    Django refuses database calls. Like a Celery worker, the thread has its own connection."""
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["value"] = work()
        except BaseException as error:  # handed back to the test
            outcome["error"] = error
        finally:
            connections.close_all()

    thread = threading.Thread(target=run)
    thread.start()
    thread.join(timeout=30)
    if thread.is_alive():
        pytest.fail("the settling work did not finish in 30 s")
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


def settle(sandbox: Any) -> int:
    for _ in range(3):  # PayPal moves the items out of PENDING...
        sandbox.tick()
    return sync_batches_task()  # ...and the beat job that follows batches reads them


def test_an_operator_sees_a_batch_settle_on_the_dashboard_without_a_reload(live_server, sandbox, settings):
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: run `make browser-deps` (apt-get install chromium)")
    settings.DASHBOARD_POLL_SECONDS = 1
    operator = member("operator", "Finance operator", password=PASSWORD)
    batch = submitted_batch(operator)
    assert batch.status == PayoutBatch.Status.SUBMITTED
    rollup_recent()  # the charts' summary tables, as the beat job keeps them

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1100})
            page.set_default_timeout(10_000)
            page.goto(f"{live_server.url}/admin/")  # signed out: the sign-in page, then back to the dashboard
            page.fill("#id_username", "operator")
            page.fill("#id_password", PASSWORD)
            page.click("input[type=submit]")
            page.wait_for_url(f"{live_server.url}/admin/")

            navigations: list[str] = []
            page.on("framenavigated", lambda frame: navigations.append(frame.url) if frame == page.main_frame else None)
            polls: list[str] = []
            page.on(
                "request", lambda request: polls.append(request.url) if "/admin/dashboard/" in request.url else None
            )
            row = page.locator(f"#batch-{batch.pk}")
            expect(row.locator(".progress-text")).to_have_text("0 of 4 paid · $0.00 of $1,000.00")
            expect(row.locator(".batch-status")).to_have_text("Sent to PayPal")
            expect(row.locator(".progress-legend")).to_contain_text("Sent to PayPal: 4 · $1,000.00")
            loaded_at = page.evaluate("window.dashboardLoadedAt")
            assert loaded_at

            assert in_thread(lambda: settle(sandbox)) == 1  # the one batch followed

            expect(row.locator(".progress-text")).to_have_text("1 of 4 paid · $100.00 of $1,000.00")
            expect(row.locator(".batch-status")).to_have_text("Completed")
            legend = row.locator(".progress-legend")
            for part in ("Unclaimed by recipient: 1 · $200.00", "Paid: 1 · $100.00", "Failed: 1 · $300.00"):
                expect(legend).to_contain_text(part)
            failures = page.locator(f"#failed-batch-{batch.pk}")
            expect(failures).to_contain_text("2 winners not paid")
            expect(failures.locator("button")).to_have_text("Retry failed items")

            assert page.evaluate("window.dashboardLoadedAt") == loaded_at  # the same page load all along
            assert navigations == [] and page.url == f"{live_server.url}/admin/"
            assert any("/admin/dashboard/batches/" in url for url in polls)
            ARTIFACTS.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / "dashboard.png"), full_page=True)
        finally:
            browser.close()
    assert (ARTIFACTS / "dashboard.png").stat().st_size > 10_000
