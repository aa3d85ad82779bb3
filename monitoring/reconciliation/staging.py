"""Staging a run's sides, streamed with flat memory.

The provider report is streamed page by page into a staging table (COPY on PostgreSQL, batches of
RECONCILIATION_STAGE_BATCH rows), our records the same way, so no side of the day is ever held in Python.
Records are read `RECONCILIATION_RECORD_SLACK_HOURS` either side of the day, so one recorded just across
midnight still matches; `in_day` says whether it falls on the day itself. The staging rows belong to one run
and are deleted when the run ends (see `monitoring.reconciliation.running`).
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import connection

from monitoring.models import ReconciliationProviderRow, ReconciliationRecordRow
from monitoring.reconciliation.sources import ProviderPages, RecordSource


class _Stager:
    """Buffers at most RECONCILIATION_STAGE_BATCH rows, then writes them: COPY on PostgreSQL."""

    def __init__(self, model: type[Any], columns: list[str]) -> None:
        self.model, self.columns, self.rows, self.count = model, columns, [], 0
        self.batch = settings.RECONCILIATION_STAGE_BATCH

    def add(self, row: tuple[Any, ...]) -> None:
        self.rows.append(row)
        if len(self.rows) >= self.batch:
            self.flush()

    def flush(self) -> None:
        if not self.rows:
            return
        if connection.vendor == "postgresql":  # PostgreSQL-only: COPY through psycopg 3
            sql = f"COPY {self.model._meta.db_table} ({', '.join(self.columns)}) FROM STDIN"
            with connection.cursor() as cursor, cursor.copy(sql) as copy:
                for row in self.rows:
                    copy.write_row(row)
        else:
            self.model.objects.bulk_create(self.model(**dict(zip(self.columns, row, strict=True))) for row in self.rows)
        self.count += len(self.rows)
        self.rows = []


def _stage_provider(run_id: int, pages: ProviderPages) -> int:
    columns = ["run_id", "transaction_id", "reference", "type", "amount_minor", "fee_minor", "net_minor"]
    stager = _Stager(ReconciliationProviderRow, [*columns, "currency", "status", "created"])
    for page in pages:
        for m in page:
            stager.add((run_id, m.transaction_id, m.reference, m.type, m.amount_minor, m.fee_minor, m.net_minor,
                        m.currency, m.status, m.created))  # fmt: skip
    stager.flush()
    return stager.count


def _stage_records(run_id: int, provider: str, sources: list[RecordSource], start: datetime, end: datetime) -> int:
    slack = timedelta(hours=settings.RECONCILIATION_RECORD_SLACK_HOURS)
    columns = ["run_id", "source", "reference", "amount_minor", "currency", "status", "settled", "in_day"]
    stager = _Stager(ReconciliationRecordRow, columns)
    for source in sources:
        for r in source(provider, start - slack, end + slack):
            in_day = start <= r.at < end
            stager.add((run_id, r.source, r.reference, r.amount_minor, r.currency, r.status, r.settled, in_day))
    stager.flush()
    return stager.count
