"""`ledger_post_many`: many ledger transactions in one statement (ledger.services.batch).

The batched sibling of `ledger_post` (migration 0004), for callers that post in bulk (a page of payout
items settling, a batch of holds). It applies a plan of many transactions, each with its own
idempotency key, set-based:

1. checks the caller's account facts (as `ledger_post` does; LDG03 when out of date);
2. claims every key with one INSERT ... ON CONFLICT DO NOTHING, in the order given (the caller sorts
   by key, so two batches sharing keys never wait on each other in a cycle); a key already used
   claims nothing and its changes are skipped;
3. adds up the balance changes of the claimed transactions, plus the changes that belong to no
   transaction (`c_txn` = 0: a voided hold's pending amounts, applied first), per balance shard; locks
   the touched shards in sorted (account, shard) order (so two batches never wait on each other in a
   cycle), then updates them all with one conditional UPDATE that keeps the no-negative rule at every
   step of the batch, not only at its end: the shard's available balance plus the lowest running total
   of its changes, transaction by transaction, must stay at or above zero (LDG01 otherwise, DETAIL as
   in `ledger_post`; LDG02 when a balance row is missing);
4. inserts every claimed transaction's entries with one INSERT, each shard's running balance and
   version numbered in the order given.

Returns the transaction ids in the order given, NULL where the key was already used. The rules of
migration 0002 (zero sum per transaction at commit, append-only journal, currency of the account)
apply to every row it writes, exactly as to `ledger_post`'s.
"""

from django.db import migrations

from core.migrations_util import RunSQLOnPostgres

FORWARD = """
CREATE FUNCTION ledger_post_many(
    t_key text[], t_request_hash text[], t_kind text[], t_description text[], t_metadata text[],
    t_event_at timestamptz[], p_created_at timestamptz, t_reverses_id bigint[],
    c_txn int[], c_account bigint[], c_shard int[], c_posted bigint[], c_pending_out bigint[],
    c_pending_in bigint[], c_entries int[],
    e_txn int[], e_account bigint[], e_shard int[], e_amount bigint[], e_currency text[], e_delta bigint[],
    a_id bigint[], a_code text[], a_currency text[], a_type text[], a_shards int[]
) RETURNS bigint[] LANGUAGE plpgsql AS $$
DECLARE
    v_ids bigint[];
    v_stale text;
    s_account bigint[];
    s_shard int[];
    s_posted bigint[];
    s_pending_out bigint[];
    s_pending_in bigint[];
    s_entries bigint[];
    s_lowest bigint[];
    v_shard_account bigint[];
    v_shard int[];
    v_before bigint[];
    v_version bigint[];
    v_refused_account bigint;
    v_refused_shard int;
    v_available bigint;
BEGIN
    SELECT a.code INTO v_stale
      FROM unnest(a_id, a_code, a_currency, a_type, a_shards) AS a(id, code, currency, type, shards)
     WHERE NOT EXISTS (
           SELECT 1 FROM ledger_account la
            WHERE la.id = a.id AND la.code = a.code AND la.currency = a.currency AND la.type = a.type
              AND la.balance_shards = a.shards)
     LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'facts of ledger account % given to ledger_post_many are out of date', v_stale
            USING ERRCODE = 'LDG03';
    END IF;

    WITH claimed AS (
        INSERT INTO ledger_transaction
            (idempotency_key, request_hash, kind, description, metadata, event_at, created_at, reverses_id)
        SELECT t.key, t.request_hash, t.kind, t.description, t.metadata::jsonb, t.event_at, p_created_at,
               t.reverses_id
          FROM unnest(t_key, t_request_hash, t_kind, t_description, t_metadata, t_event_at, t_reverses_id)
               WITH ORDINALITY AS t(key, request_hash, kind, description, metadata, event_at, reverses_id, ord)
         ORDER BY t.ord
        ON CONFLICT (idempotency_key) DO NOTHING
        RETURNING id, idempotency_key
    )
    SELECT coalesce(array_agg(claimed.id ORDER BY t.ord), '{}') INTO v_ids
      FROM unnest(t_key) WITH ORDINALITY AS t(key, ord)
      LEFT JOIN claimed ON claimed.idempotency_key = t.key;

    WITH per_transaction AS (
        SELECT c.txn, c.account, c.shard, sum(c.posted) AS posted, sum(c.pending_out) AS pending_out,
               sum(c.pending_in) AS pending_in, sum(c.entries) AS entries
          FROM unnest(c_txn, c_account, c_shard, c_posted, c_pending_out, c_pending_in, c_entries)
               AS c(txn, account, shard, posted, pending_out, pending_in, entries)
         WHERE c.txn = 0 OR v_ids[c.txn] IS NOT NULL
         GROUP BY c.txn, c.account, c.shard
    ), running AS (
        SELECT *, sum(posted - pending_out) OVER (PARTITION BY account, shard ORDER BY txn) AS available_change
          FROM per_transaction
    ), per_shard AS (
        SELECT account, shard, sum(posted) AS posted, sum(pending_out) AS pending_out,
               sum(pending_in) AS pending_in, sum(entries) AS entries, least(0, min(available_change)) AS lowest
          FROM running GROUP BY account, shard
    )
    SELECT array_agg(account ORDER BY account, shard), array_agg(shard ORDER BY account, shard),
           array_agg(posted ORDER BY account, shard), array_agg(pending_out ORDER BY account, shard),
           array_agg(pending_in ORDER BY account, shard), array_agg(entries ORDER BY account, shard),
           array_agg(lowest ORDER BY account, shard)
      INTO s_account, s_shard, s_posted, s_pending_out, s_pending_in, s_entries, s_lowest
      FROM per_shard;

    -- Lock the touched balance rows in sorted order (LockRows runs above the sort), then change them all at once.
    PERFORM 1
       FROM ledger_balance b JOIN unnest(s_account, s_shard) AS s(account, shard)
            ON b.account_id = s.account AND b.shard = s.shard
      ORDER BY b.account_id, b.shard
        FOR UPDATE OF b;
    WITH changed AS (
        UPDATE ledger_balance b
           SET posted_minor = b.posted_minor + s.posted,
               pending_out_minor = b.pending_out_minor + s.pending_out,
               pending_in_minor = b.pending_in_minor + s.pending_in,
               version = b.version + s.entries
          FROM unnest(s_account, s_shard, s_posted, s_pending_out, s_pending_in, s_entries, s_lowest)
               AS s(account, shard, posted, pending_out, pending_in, entries, lowest)
         WHERE b.account_id = s.account AND b.shard = s.shard
           AND (b.allow_negative OR b.posted_minor - b.pending_out_minor + s.lowest >= 0)
        RETURNING b.account_id, b.shard, b.posted_minor - s.posted AS before, b.version - s.entries AS version_before
    )
    SELECT coalesce(array_agg(account_id), '{}'), coalesce(array_agg(shard), '{}'),
           coalesce(array_agg(before), '{}'), coalesce(array_agg(version_before), '{}')
      INTO v_shard_account, v_shard, v_before, v_version
      FROM changed;
    IF coalesce(array_length(v_shard_account, 1), 0) < coalesce(array_length(s_account, 1), 0) THEN
        SELECT s.account, s.shard INTO v_refused_account, v_refused_shard
          FROM unnest(s_account, s_shard) AS s(account, shard)
         WHERE NOT EXISTS (SELECT 1 FROM unnest(v_shard_account, v_shard) AS c(account, shard)
                            WHERE c.account = s.account AND c.shard = s.shard)
         ORDER BY s.account, s.shard LIMIT 1;
        IF NOT EXISTS (SELECT 1 FROM ledger_balance WHERE account_id = v_refused_account AND shard = v_refused_shard)
        THEN
            RAISE EXCEPTION 'ledger account % has no balance row for shard %', v_refused_account, v_refused_shard
                USING ERRCODE = 'LDG02';
        END IF;
        SELECT sum(posted_minor - pending_out_minor) INTO v_available
          FROM ledger_balance WHERE account_id = v_refused_account;
        RAISE EXCEPTION 'insufficient funds on ledger account %', v_refused_account
            USING ERRCODE = 'LDG01',
                  DETAIL = json_build_object('account_id', v_refused_account, 'available_minor', v_available)::text;
    END IF;

    INSERT INTO ledger_entry
        (transaction_id, account_id, shard, amount_minor, currency, balance_after_minor, version_after, created_at)
    SELECT v_ids[e.txn], e.account, e.shard, e.amount, e.currency,
           s.before + sum(e.delta) OVER w, s.version_before + row_number() OVER w, clock_timestamp()
      FROM unnest(e_txn, e_account, e_shard, e_amount, e_currency, e_delta) WITH ORDINALITY
           AS e(txn, account, shard, amount, currency, delta, ord)
      JOIN unnest(v_shard_account, v_shard, v_before, v_version) AS s(account, shard, before, version_before)
        ON s.account = e.account AND s.shard = e.shard
     WHERE v_ids[e.txn] IS NOT NULL
    WINDOW w AS (PARTITION BY e.account, e.shard ORDER BY e.ord);
    RETURN v_ids;
END $$;
"""

BACKWARD = """
DROP FUNCTION IF EXISTS ledger_post_many(
    text[], text[], text[], text[], text[], timestamptz[], timestamptz, bigint[],
    int[], bigint[], int[], bigint[], bigint[], bigint[], int[],
    int[], bigint[], int[], bigint[], text[], bigint[],
    bigint[], text[], text[], text[], int[]
);
"""


class Migration(migrations.Migration):
    dependencies = [("ledger", "0005_admin_list_indexes")]
    operations = [RunSQLOnPostgres(FORWARD, BACKWARD)]
