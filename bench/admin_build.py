"""The data bench/admin.py measures the admin over: --rows N (default 1,000,000) of each kind, built set-based in
the database (INSERT ... SELECT generate_series, no ORM saves):
- ledger transactions, two entries each (2N entries): customer payments into wallets through four provider
  clearing accounts (hot: entries spread over their balance shards), and every tenth round a payout out of
  the wallets. The ledger's triggers stay on: every transaction balances at commit, each entry carries its
  shard's running balance and version, and the balance rows are set to their entries' sums;
- payout items, in 100 cycles of winner selections with one batch each (the newest prepared, the one before
  it submitted with items still pending, the rest completed);
- webhook events of the four providers (1% with a bad signature, rejected);
- payments in USD (Stripe, PayPal) and PHP (Maya, GCash), most succeeded;
then VACUUM ANALYZE, as autovacuum would have, and the analytics rollup of the last 14 days (the charts).

Identifiers the measuring searches for: transaction i has the idempotency key `bench:<i>`, payout item i the
sender item id `item-<i>`, webhook event i the event id `evt_<i, 12 digits>`, payment i the reference
`pay_<i, 12 digits>`. Call `build(rows)` after django_setup and migrate.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

CYCLES = 100  # payout cycles, one batch each
DAYS = 30  # the span the payments, webhooks and ledger transactions were created over
CLEARING_PROVIDERS = ("stripe", "paypal", "maya", "gcash")


def sql(statement: str, params: dict[str, Any] | None = None) -> int:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(statement, params)
        return cursor.rowcount


def timed(label: str, build: Callable[[], Any]) -> Any:
    started = time.monotonic()
    result = build()
    print(f"  {label}: {time.monotonic() - started:.1f} s", flush=True)
    return result


# --- setup: users, ledger, payouts, webhooks, payments ----------------------------------------------------

USERS_SQL = """
INSERT INTO auth_user (id, password, last_login, is_superuser, username, first_name, last_name, email, is_staff,
                       is_active, date_joined)
SELECT u, '!', NULL, false, 'bench-user-' || u, '', '', 'bench-user-' || u || '@example.com', false, true, now()
  FROM generate_series(1, %(users)s::bigint) AS u
"""

# Transaction i: a customer payment (debit a provider's clearing asset, credit a wallet liability), or in every
# tenth round over the wallets a payout (debit the wallet, credit the clearing account): smaller than the nine
# payments before it, so no wallet's running balance ever goes below zero.
LEDGER_TRANSACTIONS_SQL = """
INSERT INTO ledger_transaction (id, idempotency_key, request_hash, kind, description, metadata, event_at, created_at,
                                reverses_id)
SELECT i, 'bench:' || i, '', CASE WHEN k.payout THEN 'payout' ELSE 'customer_payment' END,
       CASE WHEN k.payout THEN 'Payout from wallet ' || k.wallet ELSE 'Payment pay_' || lpad(i::text, 12, '0') END,
       CASE WHEN k.payout THEN jsonb_build_object('wallet', k.wallet)
            ELSE jsonb_build_object('provider', k.provider, 'provider_reference', 'pi_bench' || i) END,
       k.t, k.t, NULL
  FROM generate_series(1, %(n)s::bigint) AS i
 CROSS JOIN LATERAL (
       SELECT ((i - 1) / %(wallets)s) %% 10 = 9 AS payout, (i - 1) %% %(wallets)s + 1 AS wallet,
              (%(providers)s::text[])[i %% 4 + 1] AS provider,
              %(start)s::timestamptz + make_interval(secs => i * %(span)s::float8 / %(n)s) AS t) AS k
"""

LEDGER_ENTRIES_SQL = """
INSERT INTO ledger_entry (id, transaction_id, account_id, shard, amount_minor, currency, balance_after_minor,
                          version_after, created_at)
SELECT 2 * legs.i - 1 + legs.leg, legs.i, legs.account_id, legs.shard, legs.amount_minor, 'USD',
       SUM(legs.amount_minor * legs.normal_sign) OVER w, ROW_NUMBER() OVER w, legs.t
  FROM (
       SELECT i, x.leg, x.account_id, x.shard, x.amount_minor, x.normal_sign, k.t
         FROM generate_series(1, %(n)s::bigint) AS i
        CROSS JOIN LATERAL (
              SELECT ((i - 1) / %(wallets)s) %% 10 = 9 AS payout,
                     (%(wallet_ids)s::bigint[])[(i - 1) %% %(wallets)s + 1] AS wallet_id,
                     (%(clearing_ids)s::bigint[])[i %% 4 + 1] AS clearing_id,
                     (i %% %(shards)s)::smallint AS clearing_shard,
                     CASE WHEN ((i - 1) / %(wallets)s) %% 10 = 9 THEN 500 + (i * 7919) %% 1000
                          ELSE 1000 + (i * 7919) %% 100000 END AS amount,
                     %(start)s::timestamptz + make_interval(secs => i * %(span)s::float8 / %(n)s) AS t) AS k
        CROSS JOIN LATERAL (VALUES
              -- leg 0 is the debit, leg 1 the credit; assets (clearing) grow with debits, liabilities with credits
              (0, CASE WHEN k.payout THEN k.wallet_id ELSE k.clearing_id END,
                  CASE WHEN k.payout THEN 0::smallint ELSE k.clearing_shard END, k.amount,
                  CASE WHEN k.payout THEN -1 ELSE 1 END),
              (1, CASE WHEN k.payout THEN k.clearing_id ELSE k.wallet_id END,
                  CASE WHEN k.payout THEN k.clearing_shard ELSE 0::smallint END, -k.amount,
                  CASE WHEN k.payout THEN 1 ELSE -1 END)
        ) AS x(leg, account_id, shard, amount_minor, normal_sign)
       ) AS legs
WINDOW w AS (PARTITION BY legs.account_id, legs.shard ORDER BY legs.i, legs.leg ROWS UNBOUNDED PRECEDING)
"""

LEDGER_BALANCES_SQL = """
UPDATE ledger_balance b
   SET posted_minor = s.posted, version = s.entries
  FROM (SELECT e.account_id, e.shard, COUNT(*) AS entries,
               SUM(e.amount_minor * CASE WHEN a.type IN ('asset', 'expense') THEN 1 ELSE -1 END) AS posted
          FROM ledger_entry e JOIN ledger_account a ON a.id = e.account_id
         GROUP BY e.account_id, e.shard) AS s
 WHERE b.account_id = s.account_id AND b.shard = s.shard
"""

CYCLES_SQL = """
INSERT INTO payouts_payoutcycle (id, created_at, updated_at, name, created_by_id)
SELECT c, k.t, k.t, 'Bench cycle ' || c, NULL
  FROM generate_series(1, %(cycles)s::bigint) AS c
 CROSS JOIN LATERAL (SELECT %(start)s::timestamptz + make_interval(secs => c * %(span)s::float8 / %(cycles)s) AS t) k
"""

# Selection s: cycle (s - 1) / per_cycle + 1, user (s - 1) %% per_cycle + 1; its item has the same id.
SELECTIONS_SQL = """
INSERT INTO payouts_winnerselection (id, created_at, updated_at, amount_minor, currency, recipient_type, recipient,
                                     paid_outside, cycle_id, user_id)
SELECT s, c.created_at, c.created_at, 1000 + (s * 7919) %% 100000, 'USD', 'EMAIL',
       'bench-user-' || ((s - 1) %% %(per_cycle)s + 1) || '@example.com', false, c.id, (s - 1) %% %(per_cycle)s + 1
  FROM generate_series(1, %(n)s::bigint) AS s
  JOIN payouts_payoutcycle c ON c.id = (s - 1) / %(per_cycle)s + 1
"""

# One batch per cycle: the newest prepared (waiting for approval), the one before submitted, the rest completed.
BATCHES_SQL = """
INSERT INTO payouts_payoutbatch (id, created_at, updated_at, provider, sender_batch_id, checksum, status, currency,
                                 total_minor, item_count, provider_batch_id, failure_reason, approved_by_id,
                                 prepared_by_id, retry_of_id, cycle_id)
SELECT c.id, c.created_at, c.created_at + interval '2 hours', CASE WHEN c.id %% 5 = 0 THEN 'stripe' ELSE 'paypal' END,
       'bench-batch-' || c.id, md5(c.id::text),
       CASE WHEN c.id = %(cycles)s THEN 'prepared' WHEN c.id = %(cycles)s - 1 THEN 'submitted' ELSE 'completed' END,
       'USD', 0, 0, CASE WHEN c.id = %(cycles)s THEN '' ELSE 'PB' || lpad(c.id::text, 10, '0') END, '',
       CASE WHEN c.id = %(cycles)s THEN NULL ELSE %(staff)s END, %(staff)s, NULL, c.id
  FROM payouts_payoutcycle c
"""

ITEMS_SQL = """
INSERT INTO payouts_payoutitem (id, created_at, updated_at, sender_item_id, amount_minor, currency, recipient_type,
                                receiver, status, provider_item_id, hold_id, error, batch_id, selection_id)
SELECT w.id, b.created_at, b.created_at + make_interval(secs => 60 + (w.id * 37) %% 86400), 'item-' || w.id,
       w.amount_minor, 'USD', w.recipient_type, w.recipient, k.status,
       CASE WHEN k.status = 'NEW' THEN '' ELSE 'PIT' || lpad(w.id::text, 12, '0') END, NULL,
       CASE WHEN k.status IN ('FAILED', 'BLOCKED', 'RETURNED') THEN 'RECEIVER_UNREGISTERED' ELSE '' END,
       b.id, w.id
  FROM payouts_winnerselection w
  JOIN payouts_payoutbatch b ON b.cycle_id = w.cycle_id
 CROSS JOIN LATERAL (SELECT (w.id * 2654435761) %% 1000 AS r) AS h
 CROSS JOIN LATERAL (SELECT CASE
       WHEN b.status = 'prepared' THEN 'NEW'
       WHEN b.status = 'submitted' THEN CASE WHEN h.r < 500 THEN 'SUCCESS' WHEN h.r < 900 THEN 'PENDING'
            WHEN h.r < 950 THEN 'UNCLAIMED' WHEN h.r < 980 THEN 'ONHOLD' ELSE 'FAILED' END
       ELSE CASE WHEN h.r < 930 THEN 'SUCCESS' WHEN h.r < 960 THEN 'FAILED' WHEN h.r < 975 THEN 'RETURNED'
            WHEN h.r < 985 THEN 'UNCLAIMED' WHEN h.r < 992 THEN 'BLOCKED' WHEN h.r < 996 THEN 'REFUNDED'
            ELSE 'REVERSED' END
       END AS status) AS k
"""

BATCH_TOTALS_SQL = """
UPDATE payouts_payoutbatch b SET total_minor = s.total, item_count = s.items
  FROM (SELECT batch_id, SUM(amount_minor) AS total, COUNT(*) AS items FROM payouts_payoutitem GROUP BY batch_id) s
 WHERE b.id = s.batch_id
"""

WEBHOOKS_SQL = """
INSERT INTO providers_webhookevent (id, created_at, updated_at, provider, event_id, event_type, signature_valid,
                                    headers, body, status, error, attempts, processed_at)
SELECT i, k.t, k.t + interval '1 second', k.provider, 'evt_' || lpad(i::text, 12, '0'), k.event_type, h.r >= 10,
       jsonb_build_object('Content-Type', 'application/json', 'User-Agent', k.provider || '-webhooks/1.0',
                          'X-Request-Id', 'req_' || i),
       '{"id": "evt_' || lpad(i::text, 12, '0') || '", "type": "' || k.event_type
           || '", "data": {"object": {"id": "pi_bench' || i || '", "amount": ' || (1000 + (i * 7919) %% 100000)
           || ', "currency": "usd"}}}',
       s.status, CASE WHEN s.status = 'failed' THEN 'payment not found' ELSE '' END, 1,
       CASE WHEN s.status IN ('processed', 'ignored', 'failed') THEN k.t + interval '1 second' END
  FROM generate_series(1, %(n)s::bigint) AS i
 CROSS JOIN LATERAL (SELECT (i::bigint * 2654435761) %% 1000 AS r) AS h
 CROSS JOIN LATERAL (
       SELECT (%(providers)s::text[])[i %% 4 + 1] AS provider,
              (%(event_types)s::text[])[(i %% 4) * 3 + (i / 4) %% 3 + 1] AS event_type,
              %(start)s::timestamptz + make_interval(secs => i * %(span)s::float8 / %(n)s) AS t) AS k
 CROSS JOIN LATERAL (SELECT CASE WHEN h.r < 10 THEN 'rejected' WHEN h.r < 900 THEN 'processed'
       WHEN h.r < 960 THEN 'ignored' WHEN h.r < 985 THEN 'failed' WHEN h.r < 995 THEN 'received'
       ELSE 'processing' END AS status) AS s
"""

EVENT_TYPES = [
    *("payment_intent.succeeded", "payment_intent.payment_failed", "charge.refunded"),  # stripe
    *("PAYMENT.PAYOUTS-ITEM.SUCCEEDED", "PAYMENT.PAYOUTSBATCH.SUCCESS", "PAYMENT.CAPTURE.COMPLETED"),  # paypal
    *("PAYMENT_SUCCESS", "PAYMENT_FAILED", "PAYMENT_EXPIRED"),  # maya
    *("payment.paid", "payment.failed", "refund.succeeded"),  # gcash
]

PAYMENTS_SQL = """
INSERT INTO providers_payment (id, created_at, updated_at, reference, client_key, amount_minor, currency, status,
                               provider, method, provider_reference, redirect_url, payment_method_token, fee_minor,
                               platform_fee_minor, refunded_minor, failure_reason, routing_decision_id, user_id)
SELECT i, k.t, k.t + interval '3 seconds', 'pay_' || lpad(i::text, 12, '0'), 'ck-' || i, k.amount,
       CASE WHEN i %% 5 = 0 THEN 'PHP' ELSE 'USD' END, s.status, k.provider,
       CASE k.provider WHEN 'stripe' THEN 'card' WHEN 'paypal' THEN 'paypal' WHEN 'maya' THEN 'maya_wallet'
            ELSE 'gcash' END,
       CASE WHEN s.status = 'pending' THEN '' ELSE 'pi_bench' || i END, '', '', k.amount * 29 / 1000 + 30,
       k.amount / 100, 0, CASE WHEN s.status = 'failed' THEN 'card_declined' ELSE '' END, NULL,
       (i - 1) %% %(users)s + 1
  FROM generate_series(1, %(n)s::bigint) AS i
 CROSS JOIN LATERAL (SELECT (i::bigint * 2654435761) %% 1000 AS r) AS h
 CROSS JOIN LATERAL (
       SELECT CASE WHEN i %% 10 = 0 THEN 'gcash' WHEN i %% 10 = 5 THEN 'maya' WHEN i %% 3 = 0 THEN 'paypal'
                   ELSE 'stripe' END AS provider,
              1000 + (i * 7919) %% 100000 AS amount,
              %(start)s::timestamptz + make_interval(secs => i * %(span)s::float8 / %(n)s) AS t) AS k
 CROSS JOIN LATERAL (SELECT CASE WHEN h.r < 850 THEN 'succeeded' WHEN h.r < 930 THEN 'failed'
       WHEN h.r < 960 THEN 'requires_action' WHEN h.r < 995 THEN 'pending' ELSE 'unknown' END AS status) AS s
"""

BENCH_TABLES = (
    "auth_user", "ledger_transaction", "ledger_entry", "ledger_balance", "payouts_payoutcycle",
    "payouts_winnerselection", "payouts_payoutbatch", "payouts_payoutitem", "providers_webhookevent",
    "providers_payment",
)  # fmt: skip


@dataclass(frozen=True)
class Shape:
    """How the N rows of each kind are laid out."""

    rows: int
    start: Any  # a datetime: DAYS before the build

    @property
    def per_cycle(self) -> int:
        return math.ceil(self.rows / CYCLES)

    @property
    def users(self) -> int:
        return self.per_cycle  # every user wins once per cycle; payments are spread over the same users

    @property
    def wallets(self) -> int:
        return max(10, min(1000, self.rows // 1000))

    def params(self, **more: Any) -> dict[str, Any]:
        return {"n": self.rows, "start": self.start, "span": DAYS * 86400, **more}


def build_users(shape: Shape) -> int:
    from django.contrib.auth import get_user_model

    sql(USERS_SQL, {"users": shape.users})
    reset_sequences(get_user_model())
    staff = get_user_model().objects.create_superuser("bench-admin", "bench-admin@example.com", None)
    return int(staff.pk)


def build_ledger(shape: Shape) -> None:
    from django.db import transaction

    from ledger.models import Account, Entry, Transaction
    from ledger.services import account_create

    clearing = [
        account_create(code=f"provider:{p}:clearing:USD", name=f"{p} clearing", type="asset", currency="USD",
                       allow_negative=True)
        for p in CLEARING_PROVIDERS
    ]  # fmt: skip
    wallets = [
        account_create(code=f"user:{w}:wallet:USD", name=f"Wallet {w}", type="liability", currency="USD",
                       owner_type="user", owner_id=str(w))
        for w in range(1, shape.wallets + 1)
    ]  # fmt: skip
    shards = {account.balance_shards for account in clearing}
    if len(shards) != 1:
        raise SystemExit(f"clearing accounts with different shard counts: {shards}")
    params = shape.params(
        wallets=shape.wallets, providers=list(CLEARING_PROVIDERS), wallet_ids=[a.pk for a in wallets],
        clearing_ids=[a.pk for a in clearing], shards=shards.pop(),
    )  # fmt: skip
    with transaction.atomic():  # the deferred zero-sum and has-entries triggers check every transaction at commit
        sql(LEDGER_TRANSACTIONS_SQL, params)
        sql(LEDGER_ENTRIES_SQL, params)
        sql(LEDGER_BALANCES_SQL)
    reset_sequences(Transaction, Entry, Account)


def build_payouts(shape: Shape, staff_id: int) -> None:
    from django.db import transaction

    from payouts.models import PayoutBatch, PayoutCycle, PayoutItem, WinnerSelection

    params = shape.params(cycles=CYCLES, per_cycle=shape.per_cycle, staff=staff_id)
    with transaction.atomic():
        sql(CYCLES_SQL, params)
        sql(SELECTIONS_SQL, params)
        sql(BATCHES_SQL, params)
        sql(ITEMS_SQL, params)
        sql(BATCH_TOTALS_SQL)
    reset_sequences(PayoutCycle, WinnerSelection, PayoutBatch, PayoutItem)


def build_webhooks(shape: Shape) -> None:
    from providers.models import WebhookEvent

    sql(WEBHOOKS_SQL, shape.params(providers=list(CLEARING_PROVIDERS), event_types=EVENT_TYPES))
    reset_sequences(WebhookEvent)


def build_payments(shape: Shape) -> None:
    from providers.models import Payment

    sql(PAYMENTS_SQL, shape.params(users=shape.users))
    reset_sequences(Payment)


def reset_sequences(*models: Any) -> None:
    """Rows were inserted with their ids: move each identity sequence past them."""
    from django.core.management.color import no_style
    from django.db import connection

    with connection.cursor() as cursor:
        for statement in connection.ops.sequence_reset_sql(no_style(), list(models)):
            cursor.execute(statement)


def vacuum_analyze() -> None:
    """What autovacuum would have done by now: statistics for the planner, visibility maps for index-only scans."""
    from django.db import connection

    with connection.cursor() as cursor:
        for table in BENCH_TABLES:
            cursor.execute(f"VACUUM (ANALYZE) {table}")  # names from the constant above


def rollup_charts() -> None:
    from analytics.models import Kind
    from analytics.services import rollup_days, utc_today

    today = utc_today()
    rollup_days(first=today - timedelta(days=13), last=today, kinds=[Kind.PAYMENT, Kind.PAYOUT])


def check_ledger() -> None:
    """The ledger's own integrity report over what was built (every rule the ledger keeps)."""
    from ledger.integrity import ledger_integrity_report

    report = ledger_integrity_report()
    for finding in report.findings[:10]:
        print(f"  integrity: FINDING {finding}")
    print(f"  integrity: {report.checked_summary()}: {'ok' if report.is_clean else 'FAILED'}", flush=True)
    if not report.is_clean:
        raise SystemExit("the bench ledger breaks the ledger's rules")


@contextmanager
def bulk_settings() -> Iterator[None]:
    """Memory and commit settings for the build, reset afterwards: the pages are measured on the same connection,
    and a planner given 256 MB of work_mem picks other plans than the server's own settings would."""
    sql("SET work_mem = '256MB'; SET maintenance_work_mem = '512MB'; SET synchronous_commit = off")
    try:
        yield
    finally:
        sql("RESET work_mem; RESET maintenance_work_mem; RESET synchronous_commit")


def build(rows: int) -> float:
    from django.utils import timezone

    shape = Shape(rows=rows, start=timezone.now() - timedelta(days=DAYS))
    started = time.monotonic()
    print(f"building {rows} rows each (users {shape.users}, wallets {shape.wallets}, cycles {CYCLES})", flush=True)
    with bulk_settings():
        staff_id = timed("users", lambda: build_users(shape))
        timed(f"ledger: {rows} transactions, {2 * rows} entries, balances", lambda: build_ledger(shape))
        timed(f"payouts: {CYCLES} cycles, batches, {rows} selections and items", lambda: build_payouts(shape, staff_id))
        timed(f"webhook events: {rows}", lambda: build_webhooks(shape))
        timed(f"payments: {rows}", lambda: build_payments(shape))
        timed("vacuum analyze", vacuum_analyze)
    timed("analytics rollup, 14 days", rollup_charts)
    seconds = time.monotonic() - started
    print(f"built rows={rows} in {seconds:.1f} s", flush=True)
    timed("ledger integrity report (not part of the build time)", check_ledger)
    return seconds
