"""core.paginators: exact counts for short lists, the planner's estimate past the limit, and never a count of
the whole table."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import User
from django.db import connection
from django.test.utils import CaptureQueriesContext

from core import paginators
from core.paginators import EstimatedCountPaginator

pytestmark = pytest.mark.django_db
on_postgres = pytest.mark.skipif(connection.vendor != "postgresql", reason="the estimate is PostgreSQL's planner's")


class TenRowPaginator(EstimatedCountPaginator):
    exact_count_limit = 10


def users(count: int) -> None:
    User.objects.bulk_create(User(username=f"payee-{n}") for n in range(count))
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE auth_user")  # the statistics autovacuum would have gathered by now


def counts_issued(captured: CaptureQueriesContext) -> list[str]:
    return [q["sql"] for q in captured.captured_queries if "COUNT(" in q["sql"].upper()]


def test_a_short_list_is_counted_exactly():
    users(7)
    paginator = TenRowPaginator(User.objects.order_by("pk"), per_page=3)

    assert (paginator.count, paginator.num_pages, paginator.count_is_estimate) == (7, 3, False)
    assert [u.username for u in paginator.page(3).object_list] == ["payee-6"]


@on_postgres
def test_a_list_past_the_limit_takes_the_planners_estimate_and_counts_no_further_than_the_limit():
    users(40)
    paginator = TenRowPaginator(User.objects.order_by("pk"), per_page=10)

    with CaptureQueriesContext(connection) as captured:
        count = paginator.count

    assert paginator.count_is_estimate is True
    assert count == 40  # freshly analyzed: the estimate of the whole table is its row count
    (counting,) = counts_issued(captured)
    assert "LIMIT 11" in counting  # the scan stops after the limit, it never reads the 40 rows
    assert [u.username for u in paginator.page(4).object_list][-1] == "payee-39"


@on_postgres
def test_a_filtered_list_past_the_limit_is_estimated_from_its_filter():
    users(40)
    paginator = TenRowPaginator(User.objects.filter(username__startswith="payee-").order_by("pk"), per_page=10)

    assert paginator.count_is_estimate is True
    assert 11 <= paginator.count <= 40


def test_an_estimate_below_what_was_already_counted_is_raised_to_it(monkeypatch):
    users(40)
    monkeypatch.setattr(paginators, "planner_row_estimate", lambda queryset: 2)  # statistics gone stale

    paginator = TenRowPaginator(User.objects.order_by("pk"), per_page=10)

    assert (paginator.count, paginator.count_is_estimate) == (11, True)


def test_without_an_estimate_the_list_is_counted_exactly(monkeypatch):
    users(40)
    monkeypatch.setattr(paginators, "planner_row_estimate", lambda queryset: None)  # a database without EXPLAIN

    paginator = TenRowPaginator(User.objects.order_by("pk"), per_page=10)

    assert (paginator.count, paginator.count_is_estimate) == (40, False)


def test_a_plain_list_is_counted_by_its_length():
    paginator = TenRowPaginator(list(range(25)), per_page=10)

    assert (paginator.count, paginator.num_pages, paginator.count_is_estimate) == (25, 3, False)


@on_postgres
def test_the_changelist_says_about_when_its_count_is_an_estimate(admin_client, monkeypatch):
    from providers.admin import WebhookEventAdmin
    from providers.models import WebhookEvent

    monkeypatch.setattr(WebhookEventAdmin, "paginator", TenRowPaginator)
    monkeypatch.setattr(paginators, "planner_row_estimate", lambda queryset: 12_345)
    events = [WebhookEvent(provider="stripe", event_id=f"evt_{n}", signature_valid=True, body="{}") for n in range(5)]
    WebhookEvent.objects.bulk_create(events)
    assert b"about 5 " not in admin_client.get("/admin/providers/webhookevent/").content  # counted exactly

    WebhookEvent.objects.bulk_create(WebhookEvent(provider="paypal", event_id=f"WH-{n}", signature_valid=True,
                                                  body="{}") for n in range(10))  # fmt: skip
    assert b"about 12345 webhook events" in admin_client.get("/admin/providers/webhookevent/").content
