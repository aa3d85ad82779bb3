"""The dashboard's selectors (monitoring.dashboard, monitoring.charts) and its pages: who sees what, what each
section shows with seeded rows, and buttons only for holders of the admin action's permission."""

from __future__ import annotations

import re
from datetime import timedelta
from decimal import Decimal
from typing import Any

import pytest
from django.contrib.auth.models import Permission, User
from django.test import Client
from django.utils import timezone

from analytics.services import rollup_recent
from core.models import AuditLog, ProcessingLock
from monitoring import dashboard
from monitoring.admin_views import SECTIONS
from monitoring.charts import dashboard_charts
from providers.availability import Availability
from providers.health import HealthStatus, _method_health, _provider_health
from tests.analytics.seed import history_seed
from tests.dashboard import seed
from tests.dashboard.conftest import member

pytestmark = pytest.mark.django_db

INDEX, SECTION = "/admin/", "/admin/dashboard/{}/"


def client_for(user: User) -> Client:
    client = Client()
    client.force_login(user)
    return client


def holds(*permissions: str):
    return lambda permission: permission in permissions


def everything(permission: str) -> bool:
    return True


# --- selectors ------------------------------------------------------------------------------------


def test_batches_in_flight_show_counts_and_amounts_by_item_status(django_assert_max_num_queries):
    batch = seed.batch_with_items("SUCCESS", "PENDING", "PENDING", "FAILED")
    waiting = seed.batch_with_items("NEW", status="prepared", provider="stripe")
    seed.age(seed.batch_with_items("SUCCESS", status="completed"), by=timedelta(days=2))  # finished long ago

    with django_assert_max_num_queries(4):
        rows = dashboard.batches_in_flight(can=holds("payouts.execute_payoutbatch"))

    assert [row.batch.pk for row in rows] == [waiting.pk, batch.pk]
    row = rows[1]
    assert (row.label, row.summary) == ("Sent to PayPal", "1 of 4 paid · $100.00 of $1,000.00")
    assert [(p.label, p.outcome, p.count, str(p.amount), p.percent) for p in row.parts] == [
        ("Sent to PayPal", "waiting", 2, "$500.00", 50),
        ("Paid", "paid", 1, "$100.00", 25),
        ("Failed", "unpaid", 1, "$400.00", 25),
    ]
    assert [action.action for action in row.actions] == ["sync_now"]
    assert rows[0].label == "Waiting for approval" and rows[0].actions == []  # not sent: nothing to sync
    assert dashboard.batches_in_flight(can=holds())[1].actions == []  # a viewer gets no button


def test_provider_calls_in_flight_show_their_state_and_the_domain_s_own_action():
    batch = seed.batch_with_items("NEW")
    soon = timezone.now() + timedelta(minutes=5)
    ran_out = seed.movement("payout.paypal_batch", batch.pk, "unknown", escalated_at=timezone.now())
    deal = seed.deal("released")
    transfer = seed.movement("escrow.transfer", deal.pk, "waiting", next_sync_at=soon)
    seed.movement("purchase.authorize", 1, "succeeded")  # done: not in flight

    operator = holds("payouts.view_payoutbatch", "escrow.view_escrowdeal", "payouts.execute_payoutbatch",
                     "escrow.retry_transfer_escrowdeal")  # fmt: skip
    rows, more = dashboard.movements_in_flight(can=operator)

    assert [row.movement.pk for row in rows] == [ran_out.pk, transfer.pk] and not more  # checks ran out: first
    assert rows[0].label == "Outcome unknown, checks ran out, a person must look it up"
    assert rows[0].help is not None and "settle it by hand" in rows[0].help.action_required
    assert (rows[0].subject.text, [a.label for a in rows[0].actions]) == (f"Batch {batch.pk}", ["Sync batch"])
    assert rows[0].link is None  # its page needs providers.view_moneymovement
    assert rows[1].label == f"Sent to Stripe, checking again at {timezone.localtime(soon):%H:%M} UTC"
    assert [(a.action, a.confirms) for a in rows[1].actions] == [("retry_transfer", True)]
    assert [row.movement.pk for row in dashboard.movements_in_flight(can=holds("escrow.view_escrowdeal"))[0]] == [
        transfer.pk
    ]  # a movement is shown to those who may see its domain
    superuser = dashboard.movements_in_flight(can=everything)[0]
    assert [a.label for a in superuser[0].actions] == ["Sync batch", "Sync movement"]
    assert superuser[0].link is not None


def test_failures_to_retry_are_unpaid_winners_nobody_pays_again():
    batch = seed.batch_with_items("SUCCESS", "FAILED", "RETURNED", status="completed",
                                  errors={1: "RECEIVER_ACCOUNT_LOCKED"})  # fmt: skip
    retried = batch.items.get(status="RETURNED")
    retry = seed.batch_with_items(status="approved")
    seed.item_add(retry, "NEW", retried.amount_minor, selection=retried.selection)  # being paid again
    failed_deal = seed.deal("transfer_failed", failure_reason="account_closed")

    (failed,) = dashboard.payout_failures(can=holds("payouts.prepare_payoutbatch"))
    assert (failed.batch.pk, failed.count, str(failed.amount)) == (batch.pk, 1, "$200.00")
    (item,) = failed.items
    assert (item.label, item.help.user_message) == (
        "Failed",
        "PayPal could not pay this winner: RECEIVER_ACCOUNT_LOCKED.",
    )
    assert [(a.action, a.pk) for a in failed.actions] == [("retry_failed", batch.pk)]
    assert dashboard.payout_failures(can=holds())[0].actions == []
    (deal,) = dashboard.transfer_failures(can=holds("escrow.retry_transfer_escrowdeal"))
    assert (deal.deal.pk, deal.label, str(deal.amount)) == (failed_deal.pk, "Transfer refused, no retry left, needs "
                                                                             "a person", "$92.00")  # fmt: skip
    assert deal.actions[0].confirms  # retry_transfer shows its confirmation page first


def test_locks_stale_first_with_a_release_button_for_operators():
    held = seed.lock("payout-cycle:1", expires_in=timedelta(minutes=10))
    stale = seed.lock("escrow-deal:7", expires_in=-timedelta(minutes=3))
    rows, more = dashboard.processing_locks(can=holds("core.release_processinglock"))
    assert [(row.lock.pk, row.stale, row.label) for row in rows] == [
        (stale.pk, True, "Stale: past its expiry, not given back"),
        (held.pk, False, "Held"),
    ]
    assert not more and [a.action for a in rows[0].actions] == ["release"]
    assert dashboard.processing_locks(can=holds())[0][0].actions == []


def test_deadlines_and_card_holds_near_expiry_soonest_first():
    near = seed.deal(deadline_in=timedelta(hours=2))
    seed.deal(deadline_in=timedelta(days=3))  # not near
    lapsing = seed.deal(deadline_in=timedelta(days=3), hold_mode="authorization",
                        authorized_at=timezone.now() - timedelta(days=6, hours=12))  # fmt: skip
    reserved = seed.purchase(deliver_in=timedelta(minutes=10))
    seed.purchase("captured", deliver_in=timedelta(minutes=5))  # delivered: its hold is not at risk
    rows = dashboard.deadlines(can=everything)
    assert [(row.kind.split(":")[0], row.link.text) for row in rows] == [
        ("Card hold", f"Purchase {reserved.pk}"),
        ("Deal deadline", f"Deal {near.pk}"),
        ("Card authorization", f"Deal {lapsing.pk}"),
    ]
    assert rows[0].label == "Card hold placed, waiting for delivery" and not rows[0].overdue
    assert [row.kind for row in dashboard.deadlines(can=holds("escrow.view_purchase"))] == [rows[0].kind]


def test_open_issues_and_alerts_newest_first():
    seed.issue("txn_1", ledger_amount_minor=1_000, provider_amount_minor=900)
    seed.issue("txn_2", status="resolved")
    (row,), more = dashboard.open_issues()
    assert (row.link.text, row.issue.get_kind_display(), row.difference, more) == ("txn_1", "Amount mismatch",
                                                                                    "$1.00", False)  # fmt: skip
    old = seed.alert("a:old", raised_at=timezone.now() - timedelta(hours=1))
    acknowledged = seed.alert("a:ack", status="acknowledged")
    seed.alert("a:done", status="resolved")
    rows, _ = dashboard.recent_alerts(can=holds("core.acknowledge_alert"))
    assert [(r.alert.pk, r.label, [a.action for a in r.actions]) for r in rows] == [
        (acknowledged.pk, "Acknowledged", []),
        (old.pk, "Open", ["acknowledge"]),
    ]


def test_provider_cards_sum_every_method_of_the_health_figures(monkeypatch):
    now = timezone.now()
    figures = [
        Availability("paypal", "payouts", 300, 8, 7, 100.0, now - timedelta(seconds=5), now - timedelta(seconds=50)),
        Availability("paypal", "orders", 300, 2, 1, 400.0, now - timedelta(seconds=30), now),
    ]
    health = _provider_health("paypal", figures, threshold=0.9, window=300, availability_error="")
    monkeypatch.setattr(dashboard, "provider_health", lambda: [health])
    (card,) = dashboard.provider_cards(can=everything)
    assert (card.name, card.health.status, card.status_label) == ("PayPal", HealthStatus.DEGRADED, "Degraded")
    assert (card.calls, card.success_percent, card.avg_latency_ms) == (10, "80.0", 160)  # (8*100 + 2*400) / 10
    assert (card.last_success_at, card.last_failure_at) == (figures[0].last_success_at, now)
    assert card.actions == []  # a closed circuit has nothing to reset
    assert _method_health(figures[1], 0.9).below_threshold


def test_charts_come_from_the_summary_tables_in_exact_major_units_per_currency():
    history = history_seed()
    rollup_recent(days=3)
    charts, as_of = dashboard_charts()
    by_id = {chart.id: chart for chart in charts}
    assert as_of and {"payment-count", "payment-amount-usd", "payment-amount-php", "payout-amount-usd"} <= set(by_id)

    def total(chart_id: str) -> Decimal:
        return sum((Decimal(v) for d in by_id[chart_id].spec["datasets"] for v in d["data"]), Decimal(0))

    assert total("payment-amount-usd") == Decimal("255.00")  # 100 + 50 + 25 + 10 + 70, every status
    assert total("payment-amount-php") == Decimal("2900.00")
    assert all(isinstance(v, str) for d in by_id["payment-amount-usd"].spec["datasets"] for v in d["data"])
    rate = by_id["payment-success"].spec
    day = rate["labels"].index(f"{history.day.day} {history.day:%b}")
    (stripe,) = [d for d in rate["datasets"] if d["label"] == "Stripe"]
    assert stripe["data"][day] == "75.00"  # 3 succeeded (2 in USD, 1 in PHP), 1 failed that day
    reasons = by_id["payment-reasons"].spec
    assert reasons["horizontal"] and reasons["labels"][0] == "card_declined"


# --- pages ----------------------------------------------------------------------------------------


def test_signed_out_visitors_and_customers_are_sent_to_sign_in(client, customer):
    assert client.get(INDEX)["Location"] == "/admin/login/?next=/admin/"
    assert client.get(SECTION.format("batches"))["Location"] == "/admin/login/?next=/admin/"
    polled = client.get(SECTION.format("batches"), headers={"HX-Request": "true"})
    assert (polled.status_code, polled["HX-Redirect"]) == (204, "/admin/login/?next=/admin/")
    signed_in = client_for(customer)
    assert signed_in.get(INDEX).status_code == 302 and signed_in.get(SECTION.format("alerts")).status_code == 302


def test_staff_land_on_the_dashboard_when_they_sign_in(client, settings):
    member("viewer", "Finance viewer", password="a-long-test-passphrase")
    landed = client.post("/admin/login/?next=/admin/", {"username": "viewer", "password": "a-long-test-passphrase",
                                                       "next": "/admin/"}, follow=True)  # fmt: skip
    assert landed.redirect_chain == [("/admin/", 302)]
    assert landed.templates[0].name == "admin/dashboard/index.html"
    html = landed.content.decode()
    assert [name for name in re.findall(r'id="dash-([a-z]+)"', html)] == [section.name for section in SECTIONS]
    assert 'hx-get="/admin/dashboard/batches/" hx-trigger="every 5s"' in html
    assert 'hx-get="/admin/dashboard/charts/" hx-trigger="every 60s"' in html
    scripts = re.findall(r'<script src="([^"]+)"', html)
    assert (
        "/static/monitoring/vendor/htmx.min.js" in scripts and "/static/monitoring/vendor/chart.umd.min.js" in scripts
    )
    assert all(src.startswith("/static/") for src in scripts)  # no CDN
    assert 'id="content-main"' in html  # the app list is still there, below


def test_staff_without_a_finance_role_get_the_plain_index():
    staff = member("helpdesk")
    User.objects.filter(pk=staff.pk).update(is_staff=True)
    response = client_for(User.objects.get(pk=staff.pk)).get(INDEX)
    assert response.status_code == 200 and response.templates[0].name == "admin/index.html"
    assert "dashboard" not in response.context


def test_each_section_is_served_alone_and_only_with_its_permission(viewer):
    viewer_client = client_for(viewer)
    for section in SECTIONS:
        response = viewer_client.get(SECTION.format(section.name))
        assert response.status_code == 200, section.name
        assert response["Cache-Control"].startswith("max-age=0")  # never cached
    assert viewer_client.get(SECTION.format("nothing")).status_code == 404
    assert viewer_client.post(SECTION.format("alerts")).status_code == 405
    watcher = member("watcher")
    User.objects.filter(pk=watcher.pk).update(is_staff=True)
    watcher.user_permissions.set(Permission.objects.filter(codename="view_alert"))
    watcher_client = client_for(User.objects.get(pk=watcher.pk))
    assert watcher_client.get(SECTION.format("alerts")).status_code == 200
    assert watcher_client.get(SECTION.format("batches")).status_code == 403
    assert re.findall(r'id="dash-([a-z]+)"', watcher_client.get(INDEX).content.decode()) == ["alerts"]


def forms_of(html: str) -> list[dict[str, Any]]:
    found = []
    for form in re.findall(r'<form method="post" action="([^"]+)" class="dash-action">(.*?)</form>', html, re.S):
        fields = dict(re.findall(r'name="([^"]+)" value="([^"]*)"', form[1]))
        found.append({"url": form[0], **fields})
    return found


def test_buttons_are_for_holders_of_the_action_permission_and_post_to_the_admin_action(viewer, operator):
    lock = seed.lock("payout-cycle:9", expires_in=-timedelta(minutes=1))
    batch = seed.batch_with_items("FAILED", status="completed")
    assert forms_of(client_for(viewer).get(SECTION.format("locks")).content.decode()) == []
    assert forms_of(client_for(viewer).get(SECTION.format("failures")).content.decode()) == []

    operator_client = client_for(operator)
    (retry,) = forms_of(operator_client.get(SECTION.format("failures")).content.decode())
    assert (retry["url"], retry["action"], retry["_selected_action"]) == (
        "/admin/payouts/payoutbatch/", "retry_failed", str(batch.pk),
    )  # fmt: skip
    (release,) = forms_of(operator_client.get(SECTION.format("locks")).content.decode())
    assert release["csrfmiddlewaretoken"] and release["action"] == "release"

    operator_client.handler.enforce_csrf_checks = True
    posted = operator_client.post(release.pop("url"), release, follow=True)
    assert posted.redirect_chain[-1][0] == "/admin/core/processinglock/"
    assert not ProcessingLock.objects.filter(pk=lock.pk).exists()
    assert AuditLog.objects.filter(actor=operator, action__contains="lock").exists()


def test_the_dashboard_renders_with_debug_off(viewer, settings):
    settings.DEBUG = False
    seed.batch_with_items("SUCCESS", "UNCLAIMED")
    seed.lock("payout-cycle:3", expires_in=timedelta(minutes=5))
    seed.alert("payout:batch:1:unpaid")
    response = client_for(viewer).get(INDEX)
    html = response.content.decode()
    assert response.status_code == 200 and "Unclaimed by recipient: 1 · $200.00" in html
    assert "1 of 2 paid · $100.00 of $300.00" in html
