"""The comparison: the ledger vs the staged provider report vs our staged records, and the issues it finds.

The ledger side, per provider reference and currency: the net of every entry on
`provider:{provider}:clearing:{currency}` whose transaction's `event_at` (when the money moved in the world,
which a late posting keeps) falls on the UTC day, grouped by the transaction's
`metadata["provider_reference"]` (the contract every poster keeps). Two fallbacks for postings made before
the contract existed: a payout hold's posting takes its payout item's `provider_item_id`, and a reversal
takes the reference of the transaction it reverses. The provider and records sides are described in
`monitoring.reconciliation.sources`.

Each reference gets at most one issue, the first kind that applies:
duplicate (two postings, two provider rows or two records) > status mismatch (a record says the money did not
move, the ledger or provider say it did) > missing in ledger > missing at provider (also a settled record of
the day that neither the ledger nor the provider has) > amount mismatch (ledger net vs provider net, or
record vs provider gross) > missing in records (only for providers with record sources).

Reruns: an issue is unique per (provider, day, reference, currency, kind). A rerun refreshes the issues it
finds again (amounts, `last_seen_run`), reopens one it had closed as fixed, leaves a staff-resolved one
resolved, and closes as `fixed` every open issue of the day it no longer finds: the issue list always shows
what is wrong now, and nothing is reported twice.

Flat memory: one SQL statement aggregates the ledger and FULL OUTER JOINs the three sides, read through a
server-side cursor, issues written in batches of ISSUE_BATCH. The same SQL runs on SQLite (3.39+, FULL OUTER
JOIN) for small days; server-side cursors are PostgreSQL-only.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import connection
from django.utils import timezone

from ledger.models import Account
from monitoring.models import ReconciliationIssue, ReconciliationRun

ISSUE_BATCH = 1_000
Kind = ReconciliationIssue.Kind


COMPARE_SQL = """
WITH payout_refs AS (
    SELECT hold_id, MAX(provider_item_id) AS reference FROM payouts_payoutitem
    WHERE hold_id IS NOT NULL AND provider_item_id <> '' AND updated_at >= %(since)s
    GROUP BY hold_id
), led_rows AS (
    SELECT t.id AS txn_id, e.currency AS currency, e.amount_minor AS amount,
        COALESCE(
            NULLIF(t.metadata ->> 'provider_reference', ''),
            pr.reference,
            (SELECT NULLIF(o.metadata ->> 'provider_reference', '') FROM ledger_transaction o
                WHERE o.id = t.reverses_id),
            ''
        ) AS reference
    FROM ledger_entry e
    JOIN ledger_transaction t ON t.id = e.transaction_id
    LEFT JOIN payout_refs pr ON pr.hold_id = CAST(t.metadata ->> 'hold_id' AS BIGINT)
    WHERE e.account_id IN ({accounts}) AND t.event_at >= %(start)s AND t.event_at < %(end)s
), led AS (
    SELECT reference, currency, CAST(SUM(amount) AS BIGINT) AS amount, COUNT(DISTINCT txn_id) AS postings
    FROM led_rows GROUP BY reference, currency
), prov AS (
    SELECT reference, currency, CAST(SUM(amount_minor) AS BIGINT) AS gross, CAST(SUM(fee_minor) AS BIGINT) AS fee,
        CAST(SUM(net_minor) AS BIGINT) AS net,
        COUNT(*) AS n
    FROM monitoring_reconciliationproviderrow WHERE run_id = %(run)s GROUP BY reference, currency
), rec AS (
    SELECT reference, currency, CAST(SUM(amount_minor) AS BIGINT) AS amount, COUNT(*) AS n, MIN(status) AS status,
        MIN(CASE WHEN settled THEN 1 ELSE 0 END) AS settled, MAX(CASE WHEN in_day THEN 1 ELSE 0 END) AS in_day
    FROM monitoring_reconciliationrecordrow WHERE run_id = %(run)s GROUP BY reference, currency
), lp AS (
    SELECT COALESCE(led.reference, prov.reference) AS reference, COALESCE(led.currency, prov.currency) AS currency,
        led.amount AS ledger_amount, COALESCE(led.postings, 0) AS postings,
        prov.gross, prov.fee, prov.net, COALESCE(prov.n, 0) AS provider_rows
    FROM led FULL OUTER JOIN prov ON prov.reference = led.reference AND prov.currency = led.currency
), sides AS (
    SELECT COALESCE(lp.reference, rec.reference) AS reference, COALESCE(lp.currency, rec.currency) AS currency,
        lp.ledger_amount, COALESCE(lp.postings, 0) AS postings, lp.gross, lp.fee, lp.net,
        COALESCE(lp.provider_rows, 0) AS provider_rows, rec.amount AS record_amount,
        COALESCE(rec.n, 0) AS record_rows, rec.status AS record_status,
        COALESCE(rec.settled, 0) AS settled, COALESCE(rec.in_day, 0) AS in_day
    FROM lp FULL OUTER JOIN rec ON rec.reference = lp.reference AND rec.currency = lp.currency
), classified AS MATERIALIZED (
    SELECT sides.*, CASE
        WHEN reference = '' THEN 'missing_at_provider'
        WHEN postings > 1 OR provider_rows > 1 OR record_rows > 1 THEN 'duplicate'
        WHEN record_rows > 0 AND settled = 0 AND (postings > 0 OR provider_rows > 0) THEN 'status_mismatch'
        WHEN provider_rows > 0 AND postings = 0 THEN 'missing_in_ledger'
        WHEN provider_rows = 0 THEN 'missing_at_provider'
        WHEN ledger_amount <> net THEN 'amount_mismatch'
        WHEN record_rows > 0 AND record_amount <> gross THEN 'amount_mismatch'
        WHEN record_rows = 0 AND %(check_records)s = 1 THEN 'missing_in_records'
    END AS kind
    FROM sides
    WHERE postings > 0 OR provider_rows > 0 OR (settled = 1 AND in_day = 1)
)
SELECT reference, currency, kind, ledger_amount, postings, gross, fee, net, provider_rows,
    record_amount, record_rows, record_status, 0 AS matched
FROM classified WHERE kind IS NOT NULL
UNION ALL
SELECT NULL, currency, NULL, SUM(ledger_amount), SUM(postings), SUM(gross), SUM(fee), SUM(net), SUM(provider_rows),
    NULL, SUM(record_rows), NULL, COUNT(*)
FROM classified WHERE kind IS NULL GROUP BY currency
"""


@dataclass
class _Row:
    reference: str
    currency: str
    kind: str
    ledger_amount: int | None
    postings: int
    gross: int | None
    fee: int | None
    net: int | None
    provider_rows: int
    record_amount: int | None
    record_rows: int
    record_status: str | None
    matched: int


def _compare(run: ReconciliationRun, start: datetime, end: datetime, *, check_records: bool) -> None:
    accounts = list(
        Account.objects.filter(code__startswith=f"provider:{run.provider}:clearing:").values_list("pk", flat=True)
    )
    slack = timedelta(hours=settings.RECONCILIATION_RECORD_SLACK_HOURS)
    sql = COMPARE_SQL.replace("{accounts}", ", ".join(str(int(pk)) for pk in accounts) or "-1")
    params = {"since": start - slack, "start": start, "end": end, "run": run.pk, "check_records": int(check_records)}
    summary: dict[str, Any] = {"by_kind": {}, "matched": {}}
    writer = _IssueWriter(run)
    with connection.chunked_cursor() as cursor:  # PostgreSQL: a server-side cursor inside this transaction
        cursor.execute(sql, params)
        while chunk := cursor.fetchmany(ISSUE_BATCH):
            for raw in chunk:
                row = _Row(*raw)
                run.ledger_rows += int(row.postings or 0)
                if row.kind is None:
                    run.matched_count += row.matched
                    summary["matched"][row.currency] = {"count": row.matched, "net_minor": int(row.net or 0)}
                    continue
                _count(summary["by_kind"], row)
                writer.add(row)
    writer.flush()
    run.fixed_issue_count = (
        ReconciliationIssue.objects.filter(provider=run.provider, date=run.date, status=ReconciliationIssue.Status.OPEN)
        .exclude(last_seen_run=run)
        .update(status=ReconciliationIssue.Status.FIXED, updated_at=timezone.now())
    )
    run.issue_count, run.new_issue_count = writer.seen, writer.created
    statuses = ReconciliationIssue.objects.filter(provider=run.provider, date=run.date)
    summary["issues_by_status"] = {s: statuses.filter(status=s).count() for s in ReconciliationIssue.Status.values}
    run.summary, run.status, run.finished_at = summary, ReconciliationRun.Status.SUCCEEDED, timezone.now()
    run.save()


def _count(by_kind: dict[str, Any], row: _Row) -> None:
    totals = by_kind.setdefault(row.kind, {}).setdefault(
        row.currency, {"count": 0, "ledger_minor": 0, "provider_minor": 0, "record_minor": 0}
    )
    totals["count"] += 1
    totals["ledger_minor"] += int(row.ledger_amount or 0)
    totals["provider_minor"] += int(row.net or 0)
    totals["record_minor"] += int(row.record_amount or 0)


def _detail(row: _Row) -> str:
    where = {
        Kind.DUPLICATE: f"{row.postings} ledger posting(s), {row.provider_rows} provider row(s), "
        f"{row.record_rows} record(s) for one reference",
        Kind.STATUS_MISMATCH: f"our record is {row.record_status!r} but the money moved "
        f"(ledger postings {row.postings}, provider rows {row.provider_rows})",
        Kind.MISSING_IN_LEDGER: "the provider moved this money; no ledger posting on the clearing account",
        Kind.MISSING_AT_PROVIDER: "no provider movement for this reference on the day"
        + ("; the ledger posting(s) carry no provider_reference" if not row.reference else ""),
        Kind.AMOUNT_MISMATCH: f"ledger net {row.ledger_amount}, provider net {row.net} "
        f"(gross {row.gross}, fee {row.fee}), record {row.record_amount}",
        Kind.MISSING_IN_RECORDS: "ledger and provider agree, but none of our records names this reference",
    }
    return where[Kind(row.kind)]


class _IssueWriter:
    """Creates or refreshes issues a thousand at a time; the unique key makes a rerun update, not duplicate."""

    def __init__(self, run: ReconciliationRun) -> None:
        self.run, self.rows, self.seen, self.created = run, [], 0, 0

    def add(self, row: _Row) -> None:
        self.rows.append(row)
        if len(self.rows) >= ISSUE_BATCH:
            self.flush()

    def flush(self) -> None:
        if not self.rows:
            return
        run, now = self.run, timezone.now()
        existing = {
            (i.provider_reference, i.currency, i.kind): i
            for i in ReconciliationIssue.objects.filter(
                provider=run.provider, date=run.date, provider_reference__in={r.reference for r in self.rows}
            )
        }
        new, changed = [], []
        for row in self.rows:
            fields = self._fields(row)
            issue = existing.get((row.reference, row.currency, row.kind))
            if issue is None:
                new.append(ReconciliationIssue(run=run, date=run.date, provider=run.provider, kind=row.kind, **fields))
                continue
            for name, value in fields.items():
                setattr(issue, name, value)
            if issue.status == ReconciliationIssue.Status.FIXED:  # it came back
                issue.status = ReconciliationIssue.Status.OPEN
            issue.updated_at = now
            changed.append(issue)
        ReconciliationIssue.objects.bulk_create(new)
        ReconciliationIssue.objects.bulk_update(changed, [*self._fields(self.rows[0]), "status", "updated_at"])
        self.seen, self.created, self.rows = self.seen + len(self.rows), self.created + len(new), []

    def _fields(self, row: _Row) -> dict[str, Any]:
        return {
            "provider_reference": row.reference,
            "currency": row.currency,
            "last_seen_run": self.run,
            "ledger_amount_minor": row.ledger_amount if row.postings else None,
            "provider_amount_minor": row.net if row.provider_rows else None,
            "provider_gross_minor": row.gross if row.provider_rows else None,
            "provider_fee_minor": row.fee if row.provider_rows else None,
            "record_amount_minor": row.record_amount if row.record_rows else None,
            "record_status": row.record_status or "",
            "ledger_postings": row.postings,
            "provider_rows": row.provider_rows,
            "record_rows": row.record_rows,
            "detail": _detail(row),
        }
