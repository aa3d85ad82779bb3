"""core.list_filters: a filter's values read by walking an index, and the admin changelists that use it."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import User
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext

from core.list_filters import indexed_distinct_values
from providers.models import WebhookEvent

pytestmark = pytest.mark.django_db
on_postgres = pytest.mark.skipif(connection.vendor != "postgresql", reason="the index walk is PostgreSQL SQL")


def events(*pairs: tuple[str, str]) -> None:
    WebhookEvent.objects.bulk_create(
        WebhookEvent(provider=provider, event_id=f"evt_{n}", event_type=event_type, signature_valid=True, body="{}")
        for n, (provider, event_type) in enumerate(pairs)
    )


@on_postgres
def test_distinct_values_come_smallest_first_once_each():
    events(("stripe", "charge.succeeded"), ("paypal", "PAYMENT.PAYOUTSBATCH.SUCCESS"), ("stripe", "charge.failed"),
           ("maya", "PAYMENT_SUCCESS"), ("stripe", "charge.succeeded"))  # fmt: skip

    assert indexed_distinct_values(WebhookEvent, "provider", using="default", limit=10) == ["maya", "paypal", "stripe"]
    assert indexed_distinct_values(WebhookEvent, "provider", using="default", limit=2) == ["maya", "paypal"]
    assert indexed_distinct_values(WebhookEvent, "event_type", using="default", limit=10) == [
        "PAYMENT.PAYOUTSBATCH.SUCCESS", "PAYMENT_SUCCESS", "charge.failed", "charge.succeeded",
    ]  # fmt: skip


def changelist_page(url: str) -> tuple[str, list[str]]:
    client = Client()
    client.force_login(User.objects.create_superuser("finance-admin", "finance@example.com", None))
    with CaptureQueriesContext(connection) as captured:
        html = client.get(url).content.decode()
    return html, [q["sql"] for q in captured.captured_queries]


def test_the_webhook_changelist_offers_the_values_found():
    events(("stripe", "charge.succeeded"), ("paypal", "PAYMENT.PAYOUTSBATCH.SUCCESS"))

    html, _ = changelist_page("/admin/providers/webhookevent/")

    assert 'href="?provider=paypal"' in html and 'href="?event_type=charge.succeeded"' in html
    assert 'href="?provider=maya"' not in html


@on_postgres
def test_the_webhook_changelist_scans_no_table_for_its_filters_or_its_count():
    events(("stripe", "charge.succeeded"), ("paypal", "PAYMENT.PAYOUTSBATCH.SUCCESS"))

    _, queries = changelist_page("/admin/providers/webhookevent/")

    assert not [sql for sql in queries if "SELECT DISTINCT" in sql]
    assert not [sql for sql in queries if sql.startswith('SELECT COUNT(*) AS "__count"')]
