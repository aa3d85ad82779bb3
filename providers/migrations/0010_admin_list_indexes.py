"""Indexes for the admin's lists of webhook events and payments at millions of rows.

- status, id and event_type, id (webhook events), provider, id and currency, id (payments): each list filter
  in the list's order (newest first), however rare the value; their first column also lets the filter list
  the values by walking the index (core.list_filters) instead of scanning the table;
- event_id (webhook events): search by the provider's event id, of valid and rejected events alike.
The lists' sort by created_at uses the index every TimestampedModel has on it.
Built CONCURRENTLY, so webhooks and payments go on while they build.
"""

from django.db import migrations

from core.migrations_util import RunSQLOnPostgres

INDEXES = {
    "providers_webhook_status_id": "providers_webhookevent (status, id)",
    "providers_webhook_type_id": "providers_webhookevent (event_type, id)",
    "providers_webhook_event_id": "providers_webhookevent (event_id)",
    "providers_payment_provider_id": "providers_payment (provider, id)",
    "providers_payment_currency_id": "providers_payment (currency, id)",
}


class Migration(migrations.Migration):
    atomic = False  # CREATE INDEX CONCURRENTLY runs outside a transaction
    dependencies = [("providers", "0009_refund_waiting")]
    operations = [
        RunSQLOnPostgres(
            [f"CREATE INDEX CONCURRENTLY IF NOT EXISTS {name} ON {target}" for name, target in INDEXES.items()],
            [f"DROP INDEX CONCURRENTLY IF EXISTS {name}" for name in INDEXES],
        )
    ]
