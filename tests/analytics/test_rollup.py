"""The rollup against figures worked out by hand from tests/analytics/seed.py, and its idempotency."""

from __future__ import annotations

from datetime import date, timedelta

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.utils import timezone

from analytics.models import DailyFailureReason, DailyStatusSummary
from analytics.services import rollup_days, rollup_recent
from analytics.tasks import roll_up_recent_days_task
from config.celery import app
from payouts.models import PayoutBatch
from providers.models import Payment
from tests.analytics.seed import History

Figures = dict[tuple[str, str, str], tuple[int, int, int, int]]


def statuses(kind: str, day: date) -> Figures:
    """(provider, currency, status) -> (count, amount_minor, final_count, final_seconds)."""
    return {
        (row.provider, row.currency, row.status): (row.count, row.amount_minor, row.final_count, row.final_seconds)
        for row in DailyStatusSummary.objects.filter(kind=kind, day=day)
    }


def reasons(kind: str, day: date) -> dict[tuple[str, str], int]:
    return {(row.provider, row.reason): row.count for row in DailyFailureReason.objects.filter(kind=kind, day=day)}


def everything() -> list[tuple]:
    summaries = DailyStatusSummary.objects.order_by("pk").values_list(
        "pk", "day", "kind", "provider", "currency", "status", "count", "amount_minor", "final_count", "final_seconds"
    )
    failures = DailyFailureReason.objects.order_by("pk").values_list("pk", "day", "kind", "provider", "reason", "count")
    return [*summaries, *failures]


def test_payments_attempts_and_refunds_add_up_to_the_hand_computed_figures(history: History) -> None:
    rollup_days(first=history.day, last=history.day)
    day = history.day
    assert statuses("payment", day) == {
        ("stripe", "USD", "succeeded"): (2, 15_000, 1, 30),  # p1 + p2; p2 was refunded, so only p1 is timed
        ("stripe", "USD", "failed"): (1, 2_500, 1, 10),
        ("stripe", "PHP", "succeeded"): (1, 100_000, 0, 0),  # a refund is in flight: its updated_at moved on
        ("maya", "PHP", "failed"): (1, 50_000, 1, 20),
        ("maya", "PHP", "pending"): (1, 70_000, 0, 0),
        ("gcash", "PHP", "succeeded"): (1, 30_000, 1, 90),
        ("gcash", "PHP", "failed"): (1, 40_000, 1, 100),
    }  # p9 (today) and p10 (the day before) are other days
    assert reasons("payment", day) == {
        ("stripe", "card_declined"): 1,
        ("maya", "card_declined"): 1,
        ("gcash", "failed"): 1,
    }
    assert statuses("payment_attempt", day) == {
        ("stripe", "USD", "succeeded"): (1, 10_000, 0, 0),  # attempts are counted, not timed
        ("maya", "PHP", "declined"): (2, 80_000, 0, 0),  # p7's first try (the fallback) and p5
        ("gcash", "PHP", "succeeded"): (1, 30_000, 0, 0),
    }
    assert reasons("payment_attempt", day) == {("maya", "provider_down"): 1, ("maya", "card_declined"): 1}
    assert statuses("refund", day) == {
        ("stripe", "USD", "succeeded"): (1, 2_000, 1, 40),
        ("stripe", "USD", "failed"): (1, 10_000, 1, 15),
        ("stripe", "PHP", "pending"): (1, 25_000, 0, 0),
    }
    assert reasons("refund", day) == {("stripe", "charge_already_refunded"): 1}


def test_payouts_escrow_and_purchases_add_up_to_the_hand_computed_figures(history: History) -> None:
    rollup_days(first=history.day, last=history.day)
    day = history.day
    assert statuses("payout", day) == {
        ("paypal", "USD", "SUCCESS"): (1, 1_000, 1, 3600),
        ("paypal", "USD", "UNCLAIMED"): (1, 2_000, 0, 0),  # not final
        ("paypal", "USD", "RETURNED"): (1, 3_000, 1, 7200),
        ("paypal", "USD", "FAILED"): (1, 500, 1, 60),
        ("stripe", "JPY", "SUCCESS"): (1, 4_000, 1, 120),
    }
    assert reasons("payout", day) == {("paypal", "RECEIVER_UNREGISTERED"): 1, ("paypal", "FAILED"): 1}
    assert statuses("payout_batch", day) == {
        ("paypal", "USD", "submitted"): (1, 6_500, 0, 0),
        ("stripe", "JPY", "completed"): (1, 4_000, 1, 300),
    }
    assert statuses("escrow", day) == {
        ("stripe", "USD", "transferred"): (1, 20_000, 1, 1000),  # transferred_at, not the later updated_at
        ("stripe", "USD", "failed"): (1, 8_000, 1, 5),
        ("stripe", "USD", "held"): (1, 6_000, 0, 0),
        ("stripe", "PHP", "refunded"): (1, 300_000, 1, 2000),
    }
    assert reasons("escrow", day) == {("stripe", "card_declined"): 1}
    assert statuses("purchase", day) == {
        ("stripe", "USD", "captured"): (1, 10_000, 1, 600),
        ("stripe", "USD", "refunded"): (1, 10_000, 0, 0),  # refunds moved its updated_at: not timed
        ("stripe", "PHP", "voided"): (1, 25_000, 1, 900),
        ("stripe", "USD", "declined"): (1, 10_000, 1, 2),
    }
    assert reasons("purchase", day) == {("stripe", "timed_out"): 1, ("stripe", "card_declined"): 1}
    assert statuses("purchase_refund", day) == {("stripe", "USD", "succeeded"): (1, 10_000, 1, 30)}


def test_running_twice_gives_the_same_rows_and_a_changed_status_replaces_its_group(history: History) -> None:
    rollup_recent(days=2)
    first = everything()
    assert first
    rollup_recent(days=2)
    assert everything() == first  # same keys, same figures, same row ids (upserted, not re-inserted)

    Payment.objects.filter(pk=history.payments["p6"].pk).update(status="failed", failure_reason="expired")
    rollup_recent(days=2)
    assert statuses("payment", history.day)[("maya", "PHP", "failed")] == (2, 120_000, 2, 20)
    assert ("maya", "PHP", "pending") not in statuses("payment", history.day)  # the emptied group is gone
    assert reasons("payment", history.day)[("maya", "expired")] == 1


def test_the_recent_window_is_today_and_yesterday_and_leaves_older_days_alone(history: History) -> None:
    older = history.day - timedelta(days=1)
    rollup_days(first=older, last=older)
    kept = everything()
    assert statuses("payment", older) == {("stripe", "USD", "failed"): (1, 7_000, 1, 8)}  # p10

    result = rollup_recent()  # settings.ANALYTICS_RECENT_DAYS: today and yesterday
    assert (result.first, result.last) == (history.day, history.day + timedelta(days=1))
    assert statuses("payment", history.day + timedelta(days=1)) == {("stripe", "USD", "succeeded"): (1, 1_000, 1, 5)}
    assert [row for row in everything() if row in kept] == kept  # the older day's rows are untouched


def test_a_day_with_nothing_left_loses_its_rows(history: History) -> None:
    rollup_days(first=history.day, last=history.day, kinds=["payout_batch"])
    assert DailyStatusSummary.objects.filter(kind="payout_batch").count() == 2
    PayoutBatch.objects.update(created_at=timezone.now() - timedelta(days=30))  # as if they were older
    result = rollup_days(first=history.day, last=history.day, kinds=["payout_batch"])
    assert result.deleted_rows == 2
    assert not DailyStatusSummary.objects.filter(kind="payout_batch").exists()


def test_the_backfill_command_covers_the_range_and_refuses_bad_dates(history: History, capsys) -> None:
    call_command("analytics_rollup", "--since", str(history.day - timedelta(days=1)))
    for offset in (-1, 0, 1):
        assert DailyStatusSummary.objects.filter(kind="payment", day=history.day + timedelta(days=offset)).exists()
    assert "status rows" in capsys.readouterr().out
    with pytest.raises(CommandError):
        call_command("analytics_rollup", "--since", "2026-13-01")
    with pytest.raises(CommandError):
        call_command("analytics_rollup", "--since", str(history.day), "--until", str(history.day - timedelta(days=2)))


def test_the_beat_job_is_scheduled_and_registered(history: History, settings) -> None:
    settings.ANALYTICS_ROLLUP_CHUNK_DAYS = 1  # also exercises a range split into several transactions
    scheduled = {entry["task"] for entry in settings.CELERY_BEAT_SCHEDULE.values()}
    assert "analytics.roll_up_recent_days" in scheduled
    assert "analytics.roll_up_recent_days" in app.tasks
    figures = roll_up_recent_days_task.delay().get()
    assert figures["status_rows"] == DailyStatusSummary.objects.count() > 0
