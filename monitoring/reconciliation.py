"""Daily reconciliation: the ledger vs the provider's report vs our own records, for one provider and one day.

What is compared, per provider reference (the id of the provider object that moved the money: `pi_` for a
capture, `re_` refund, `tr_` transfer, `trr_` transfer reversal) and currency:
- **ledger**: the net of every entry on `provider:{provider}:clearing:{currency}` whose transaction's
  `event_at` (when the money moved in the world, which a late posting keeps) falls on the UTC day, grouped by
  the transaction's `metadata["provider_reference"]` (the contract every poster keeps). Two fallbacks for
  postings made before the contract existed: a payout hold's posting takes its payout item's
  `provider_item_id`, and a reversal takes the reference of the transaction it reverses;
- **provider**: the provider's report of the day (Stripe balance transactions with `created` on the day), its
  `net` (amount less the provider's fee): the clearing account mirrors the provider balance, so a fee booked
  differently from the one charged is an amount mismatch;
- **our records**: the rows that say money moved (`RECORD_SOURCES`), their gross amount signed as the
  provider's (captures positive, refunds and transfers negative) and whether their status says it moved.

Each reference gets at most one issue, the first kind that applies:
duplicate (two postings, two provider rows or two records) > status mismatch (a record says the money did not
move, the ledger or provider say it did) > missing in ledger > missing at provider (also a settled record of
the day that neither the ledger nor the provider has) > amount mismatch (ledger net vs provider net, or
record vs provider gross) > missing in records (only for providers with record sources).

Reruns: an issue is unique per (provider, day, reference, currency, kind). A rerun refreshes the issues it
finds again (amounts, `last_seen_run`), reopens one it had closed as fixed, leaves a staff-resolved one
resolved, and closes as `fixed` every open issue of the day it no longer finds: the issue list always shows
what is wrong now, and nothing is reported twice.

Flat memory: the provider report is streamed page by page into a staging table (COPY on PostgreSQL, batches
of RECONCILIATION_STAGE_BATCH rows), our records the same way; then one SQL statement aggregates the ledger
and FULL OUTER JOINs the three sides, read through a server-side cursor, issues written in batches. No side
of the day is ever held in Python. The staging rows are deleted when the run ends. The same SQL runs on
SQLite (3.39+, FULL OUTER JOIN) for small days; COPY and server-side cursors are PostgreSQL-only.

Record sources today: customer payments and refunds, payout transfers, escrow deals (capture, refund,
transfer, transfer reversals) and purchases (capture, refunds).
Adding a source of records: write a function
`(provider, start, end) -> Iterable[Record]` yielding the records whose time is in [start, end) and append it
to `RECORD_SOURCES[provider]` in this module (monitoring may read every app; no app imports monitoring).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from time import monotonic
from typing import Any

import structlog
from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.base_user import AbstractBaseUser
from django.db import connection, transaction
from django.utils import timezone

from core.alerts import alert_raise
from core.errors import InvalidRequest, InvalidStateTransition, NotFound
from core.locks import processing_lock
from core.permissions import require_permission
from core.services import audit_record
from escrow.models import EscrowDeal, EscrowTransferReversal, Purchase, PurchaseRefund
from ledger.models import Account
from monitoring.models import (
    ReconciliationIssue,
    ReconciliationProviderRow,
    ReconciliationRecordRow,
    ReconciliationRun,
)
from payouts.models import PayoutItem
from providers.models import Payment, Refund
from providers.stripe.client import BalanceMovement, StripeProviderClient

log = structlog.get_logger(__name__)

RUN_PERMISSION = "monitoring.run_reconciliation"
RESOLVE_PERMISSION = "monitoring.resolve_reconciliationissue"
ISSUE_BATCH = 1_000
Kind = ReconciliationIssue.Kind


# --- sources ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Record:
    """One of our rows that says money moved (or was meant to)."""

    source: str
    reference: str
    amount_minor: int  # signed as the provider reports it: money in > 0, out < 0
    currency: str
    status: str
    settled: bool  # the status says the money moved
    at: datetime


ProviderPages = Iterable[Iterable[BalanceMovement]]
ProviderSource = Callable[[datetime, datetime], ProviderPages]
RecordSource = Callable[[str, datetime, datetime], Iterable[Record]]


def stripe_pages(start: datetime, end: datetime) -> Iterator[list[BalanceMovement]]:
    with StripeProviderClient() as client:
        yield from client.balance_transaction_pages(created_gte=int(start.timestamp()), created_lt=int(end.timestamp()))


def payment_records(provider: str, start: datetime, end: datetime) -> Iterator[Record]:
    rows = (
        Payment.objects.filter(provider=provider, updated_at__gte=start, updated_at__lt=end)
        .exclude(provider_reference="")
        .values_list("provider_reference", "amount_minor", "currency", "status", "updated_at")
    )
    for reference, amount, currency, status, at in rows.iterator(chunk_size=2_000):
        yield Record("payment", reference, amount, currency, status, status == Payment.Status.SUCCEEDED, at)


def refund_records(provider: str, start: datetime, end: datetime) -> Iterator[Record]:
    rows = (
        Refund.objects.filter(payment__provider=provider, updated_at__gte=start, updated_at__lt=end)
        .exclude(provider_reference="")
        .values_list("provider_reference", "amount_minor", "payment__currency", "status", "updated_at")
    )
    for reference, amount, currency, status, at in rows.iterator(chunk_size=2_000):
        yield Record("refund", reference, -amount, currency, status, status == Refund.Status.SUCCEEDED, at)


PAID_ITEM_STATUSES = frozenset({PayoutItem.Status.SUCCESS, *PayoutItem.TAKEN_BACK})


def payout_transfer_records(provider: str, start: datetime, end: datetime) -> Iterator[Record]:
    rows = PayoutItem.objects.filter(
        batch__provider=provider, provider_item_id__startswith="tr_", updated_at__gte=start, updated_at__lt=end
    ).values_list("provider_item_id", "amount_minor", "currency", "status", "updated_at")
    for reference, amount, currency, status, at in rows.iterator(chunk_size=2_000):
        yield Record("payout_item", reference, -amount, currency, status, status in PAID_ITEM_STATUSES, at)


def escrow_deal_records(provider: str, start: datetime, end: datetime) -> Iterator[Record]:
    """An escrow deal's capture, refund and transfer, each at the moment it was recorded."""
    if provider != "stripe":
        return
    deals = EscrowDeal.objects.all()
    captured = deals.filter(captured_at__gte=start, captured_at__lt=end).exclude(payment_intent_id="")
    for deal in captured.only("payment_intent_id", "amount_minor", "currency", "status", "captured_at").iterator(
        chunk_size=2_000
    ):
        yield Record("escrow_capture", deal.payment_intent_id, deal.amount_minor, deal.currency, deal.status, True,
                     deal.captured_at)  # fmt: skip
    refunded = deals.filter(refunded_at__gte=start, refunded_at__lt=end).exclude(refund_id="")
    for deal in refunded.only("refund_id", "amount_minor", "currency", "status", "refunded_at").iterator(
        chunk_size=2_000
    ):
        yield Record("escrow_refund", deal.refund_id, -deal.amount_minor, deal.currency, deal.status, True,
                     deal.refunded_at)  # fmt: skip
    transferred = deals.filter(transferred_at__gte=start, transferred_at__lt=end).exclude(transfer_id="")
    for deal in transferred.iterator(chunk_size=2_000):
        yield Record("escrow_transfer", deal.transfer_id, -deal.seller_net_minor, deal.currency, deal.status,
                     deal.status in ESCROW_TRANSFERRED, deal.transferred_at)  # fmt: skip
    reversals = EscrowTransferReversal.objects.filter(created_at__gte=start, created_at__lt=end).select_related("deal")
    for reversal in reversals.iterator(chunk_size=2_000):
        yield Record("escrow_transfer_reversal", reversal.reversal_id, reversal.amount_minor, reversal.deal.currency,
                     "reversed", True, reversal.created_at)  # fmt: skip


ESCROW_TRANSFERRED = frozenset({EscrowDeal.Status.TRANSFERRED, EscrowDeal.Status.REVERSED})
PURCHASE_CAPTURED = frozenset({Purchase.Status.CAPTURED, Purchase.Status.REFUNDED})


def purchase_records(provider: str, start: datetime, end: datetime) -> Iterator[Record]:
    rows = (
        Purchase.objects.filter(provider=provider, captured_minor__gt=0, updated_at__gte=start, updated_at__lt=end)
        .exclude(payment_intent_id="")
        .values_list("payment_intent_id", "captured_minor", "currency", "status", "updated_at")
    )
    for reference, amount, currency, status, at in rows.iterator(chunk_size=2_000):
        yield Record("purchase", reference, amount, currency, status, status in PURCHASE_CAPTURED, at)


def purchase_refund_records(provider: str, start: datetime, end: datetime) -> Iterator[Record]:
    rows = (
        PurchaseRefund.objects.filter(purchase__provider=provider, updated_at__gte=start, updated_at__lt=end)
        .exclude(provider_refund_id="")
        .values_list("provider_refund_id", "amount_minor", "purchase__currency", "status", "updated_at")
    )
    for reference, amount, currency, status, at in rows.iterator(chunk_size=2_000):
        settled = status == PurchaseRefund.Status.SUCCEEDED
        yield Record("purchase_refund", reference, -amount, currency, status, settled, at)


PROVIDER_SOURCES: dict[str, ProviderSource] = {"stripe": stripe_pages}
RECORD_SOURCES: dict[str, list[RecordSource]] = {
    "stripe": [
        payment_records,
        refund_records,
        payout_transfer_records,
        escrow_deal_records,
        purchase_records,
        purchase_refund_records,
    ],
}


def day_bounds(day: date) -> tuple[datetime, datetime]:
    start = datetime.combine(day, time.min, tzinfo=UTC)
    return start, start + timedelta(days=1)


# --- running ----------------------------------------------------------------------------------


def reconciliation_run(
    *,
    day: date,
    provider: str,
    trigger: str,
    actor: AbstractBaseUser | None = None,
    provider_pages: ProviderPages | None = None,
    record_sources: list[RecordSource] | None = None,
) -> ReconciliationRun:
    """Compare one provider's day; staff (`actor`) need `monitoring.run_reconciliation`, jobs pass None.

    `provider_pages` and `record_sources` replace the registered sources (the benchmark feeds generated pages).
    """
    if actor is not None:
        require_permission(actor, RUN_PERMISSION)
    if trigger not in ReconciliationRun.Trigger.values:
        raise InvalidRequest(f"unknown trigger {trigger!r}", details={"allowed": ReconciliationRun.Trigger.values})
    if provider_pages is None and provider not in PROVIDER_SOURCES:
        raise InvalidRequest(
            f"no reconciliation source for provider {provider!r}",
            user_message=f"Reconciliation is not available for {provider!r}.",
            action_required=f"Choose one of: {', '.join(sorted(PROVIDER_SOURCES))}.",
            details={"provider": provider, "available": sorted(PROVIDER_SOURCES)},
        )
    if day > timezone.now().date():
        raise InvalidRequest(
            f"{day} is in the future",
            user_message="A day that has not happened yet cannot be reconciled.",
            action_required="Choose today or an earlier day (UTC).",
            details={"date": day.isoformat()},
        )
    holder = actor.get_username() if actor is not None else f"reconciliation ({trigger})"
    with processing_lock(key=f"reconciliation:{provider}:{day}", holder=holder, reason=f"reconciling {day}"):
        run = ReconciliationRun.objects.create(
            date=day, provider=provider, trigger=trigger, triggered_by=actor, started_at=timezone.now()
        )
        if actor is not None:
            audit_record(actor=actor, action="monitoring.reconciliation.run", obj=run, after={"date": str(day)})
        try:
            _reconcile(run, provider_pages, record_sources)
        except Exception as error:
            ReconciliationRun.objects.filter(pk=run.pk).update(
                status=ReconciliationRun.Status.FAILED, finished_at=timezone.now(), error=str(error)[:2_000]
            )
            log.exception("reconciliation.failed", provider=provider, date=str(day), run=run.pk)
            raise
        finally:
            ReconciliationProviderRow.objects.filter(run_id=run.pk).delete()
            ReconciliationRecordRow.objects.filter(run_id=run.pk).delete()
    run.refresh_from_db()
    _alert_if_open(run)
    return run


def _reconcile(
    run: ReconciliationRun, provider_pages: ProviderPages | None, record_sources: list[RecordSource] | None
) -> None:
    start, end = day_bounds(run.date)
    began = monotonic()
    pages = provider_pages if provider_pages is not None else PROVIDER_SOURCES[run.provider](start, end)
    run.provider_rows = _stage_provider(run.pk, pages)
    staged = monotonic()
    sources = RECORD_SOURCES.get(run.provider, []) if record_sources is None else record_sources
    run.record_rows = _stage_records(run.pk, run.provider, sources, start, end)
    recorded = monotonic()
    with transaction.atomic():
        _compare(run, start, end, check_records=bool(sources))
    seconds = {"provider": staged - began, "records": recorded - staged, "compare": monotonic() - recorded}
    run.summary["seconds"] = {phase: round(value, 3) for phase, value in seconds.items()}
    ReconciliationRun.objects.filter(pk=run.pk).update(summary=run.summary)


# --- staging (streamed, flat memory) ----------------------------------------------------------


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


# --- the comparison: one statement, streamed ----------------------------------------------------

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


def _alert_if_open(run: ReconciliationRun) -> None:
    open_count = run.summary.get("issues_by_status", {}).get(ReconciliationIssue.Status.OPEN, 0)
    if not open_count:
        return
    alert_raise(
        key=f"reconciliation:{run.provider}:{run.date}",
        title=f"{open_count} open reconciliation issue(s) for {run.provider} on {run.date}",
        detail=f"Run #{run.pk}: {run.issue_count} mismatch(es), {run.new_issue_count} new, "
        f"{run.matched_count} matched.",
        action_required="Review the reconciliation issues of that day: assign, investigate, resolve with a note.",
    )


# --- staff actions on issues --------------------------------------------------------------------


def _locked_issue(issue_id: int) -> ReconciliationIssue:
    issue = ReconciliationIssue.objects.select_for_update().filter(pk=issue_id).first()
    if issue is None:
        raise NotFound(f"reconciliation issue {issue_id} does not exist", details={"issue": issue_id})
    return issue


def _move(issue: ReconciliationIssue, target: str) -> None:
    if target not in ReconciliationIssue.TRANSITIONS[ReconciliationIssue.Status(issue.status)]:
        raise InvalidStateTransition(
            f"issue {issue.pk} is {issue.status}, cannot become {target}",
            user_message=f"This issue is already {issue.get_status_display().lower()}.",
            action_required="Reload the issue list to see its current state.",
            details={"issue": issue.pk, "status": issue.status},
        )
    issue.status = target


@transaction.atomic
def issue_assign(*, issue_id: int, actor: AbstractBaseUser, assignee_id: int | None) -> ReconciliationIssue:
    """Give an issue to a staff user (or to nobody, `assignee_id=None`)."""
    require_permission(actor, RESOLVE_PERMISSION)
    issue = _locked_issue(issue_id)
    assignee = None
    if assignee_id is not None:
        assignee = get_user_model().objects.filter(pk=assignee_id, is_active=True, is_staff=True).first()
        if assignee is None:
            raise InvalidRequest(
                f"user {assignee_id} is not an active staff user",
                user_message="An issue can only be assigned to an active staff user.",
                action_required="Choose another person from the staff list.",
                details={"assignee": assignee_id},
            )
    before = {"assignee": issue.assignee_id}
    issue.assignee = assignee
    issue.save(update_fields=["assignee", "updated_at"])
    audit_record(actor=actor, action="monitoring.reconciliation_issue.assign", obj=issue, before=before,
                 after={"assignee": assignee_id})  # fmt: skip
    return issue


@transaction.atomic
def issue_resolve(*, issue_id: int, actor: AbstractBaseUser, note: str) -> ReconciliationIssue:
    """Close an open issue with a note saying what was found or done."""
    require_permission(actor, RESOLVE_PERMISSION)
    if not note.strip():
        raise InvalidRequest(
            "a resolution needs a note",
            user_message="Say what was found or done before resolving the issue.",
            action_required="Write a resolution note and submit again.",
        )
    issue = _locked_issue(issue_id)
    before = {"status": issue.status}
    _move(issue, ReconciliationIssue.Status.RESOLVED)
    issue.resolution_note, issue.resolved_by, issue.resolved_at = note.strip(), actor, timezone.now()
    issue.save(update_fields=["status", "resolution_note", "resolved_by", "resolved_at", "updated_at"])
    audit_record(actor=actor, action="monitoring.reconciliation_issue.resolve", obj=issue, before=before,
                 after={"status": issue.status, "note": issue.resolution_note})  # fmt: skip
    return issue


@transaction.atomic
def issue_reopen(*, issue_id: int, actor: AbstractBaseUser, note: str = "") -> ReconciliationIssue:
    """Open a resolved (or rerun-fixed) issue again."""
    require_permission(actor, RESOLVE_PERMISSION)
    issue = _locked_issue(issue_id)
    before = {"status": issue.status, "note": issue.resolution_note}
    _move(issue, ReconciliationIssue.Status.OPEN)
    issue.resolved_by, issue.resolved_at = None, None
    issue.save(update_fields=["status", "resolved_by", "resolved_at", "updated_at"])
    audit_record(actor=actor, action="monitoring.reconciliation_issue.reopen", obj=issue, before=before,
                 after={"status": issue.status, "note": note.strip()})  # fmt: skip
    return issue
