"""An index for the admin's list of ledger transactions at millions of rows: filtered by kind, newest first.

Its first column also lets the kind filter list the kinds by walking the index (core.list_filters) instead of
scanning the table. Built CONCURRENTLY, so postings go on while it builds; the ledger's other indexes are
unchanged (0003 trimmed them for posting speed, and this adds one entry per transaction).
"""

from django.db import migrations

from core.migrations_util import RunSQLOnPostgres

INDEXES = {"ledger_transaction_kind_id": "ledger_transaction (kind, id)"}


class Migration(migrations.Migration):
    atomic = False  # CREATE INDEX CONCURRENTLY runs outside a transaction
    dependencies = [("ledger", "0004_ledger_post_function")]
    operations = [
        RunSQLOnPostgres(
            [f"CREATE INDEX CONCURRENTLY IF NOT EXISTS {name} ON {target}" for name, target in INDEXES.items()],
            [f"DROP INDEX CONCURRENTLY IF EXISTS {name}" for name in INDEXES],
        )
    ]
