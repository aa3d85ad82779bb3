"""PostgreSQL only: the staging tables are scratch space emptied after every run, so they skip the WAL
(UNLOGGED: faster COPY, and a crash merely empties them). SQLite has no such thing and needs nothing."""

from django.db import migrations

STAGING = ("monitoring_reconciliationproviderrow", "monitoring_reconciliationrecordrow")


def set_logged(logged: bool):
    def apply(apps, schema_editor):
        if schema_editor.connection.vendor != "postgresql":
            return
        for table in STAGING:
            schema_editor.execute(f"ALTER TABLE {table} SET {'LOGGED' if logged else 'UNLOGGED'}")

    return apply


class Migration(migrations.Migration):
    dependencies = [("monitoring", "0001_reconciliation")]

    operations = [migrations.RunPython(set_logged(False), set_logged(True))]
