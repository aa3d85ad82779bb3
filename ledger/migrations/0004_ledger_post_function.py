"""`ledger_post`: the PostgreSQL writer behind ledger.services, one statement per posting.

ledger.services validates, hashes and plans a write (which balance shards change
by how much, in sorted order, and which entries to insert); this function
applies the plan: it claims the idempotency key, updates each balance row with
a conditional UPDATE that row-locks it and keeps the no-negative rule, and
inserts the entries with their running balance and version. Called as a
single statement it is its own transaction; inside a caller's transaction it
is one more statement of it.

Returns the new transaction id; NULL when the key was already used, or when
the plan has no transaction (a hold's pending amounts only).
The caller states what it believes of each account it touches (id, code,
currency, type, shard count); the function checks that against the table
first, so facts a caller remembered can never misdirect a posting.

Raises SQLSTATE LDG01 (insufficient funds; DETAIL is JSON with account_id and
available_minor), LDG02 (a balance row is missing: a bug) or LDG03 (the
caller's account facts are out of date: read them again and retry).
"""

from django.db import migrations

from core.migrations_util import RunSQLOnPostgres

FORWARD = """
CREATE FUNCTION ledger_post(
    p_key text, p_request_hash text, p_kind text, p_description text, p_metadata jsonb,
    p_event_at timestamptz, p_created_at timestamptz, p_reverses_id bigint,
    c_account bigint[], c_shard int[], c_posted bigint[], c_pending_out bigint[], c_pending_in bigint[],
    c_entries int[],
    e_change int[], e_amount bigint[], e_currency text[], e_delta bigint[],
    a_id bigint[], a_code text[], a_currency text[], a_type text[], a_shards int[]
) RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE
    v_txn bigint;
    v_running bigint[] := '{}';
    v_version bigint[] := '{}';
    v_balance_after bigint[] := '{}';
    v_version_after bigint[] := '{}';
    v_posted bigint;
    v_new_version bigint;
    v_available bigint;
    j int;
BEGIN
    FOR i IN 1 .. coalesce(array_length(a_id, 1), 0) LOOP  -- one primary-key lookup each
        PERFORM 1 FROM ledger_account
          WHERE id = a_id[i] AND code = a_code[i] AND currency = a_currency[i] AND type = a_type[i]
            AND balance_shards = a_shards[i];
        IF NOT FOUND THEN
            RAISE EXCEPTION 'facts of ledger account % given to ledger_post are out of date', a_code[i]
                USING ERRCODE = 'LDG03';
        END IF;
    END LOOP;
    IF p_key IS NOT NULL THEN
        INSERT INTO ledger_transaction
            (idempotency_key, request_hash, kind, description, metadata, event_at, created_at, reverses_id)
        VALUES (p_key, p_request_hash, p_kind, p_description, p_metadata, p_event_at, p_created_at, p_reverses_id)
        ON CONFLICT (idempotency_key) DO NOTHING
        RETURNING id INTO v_txn;
        IF v_txn IS NULL THEN
            RETURN NULL;
        END IF;
    END IF;

    FOR i IN 1 .. coalesce(array_length(c_account, 1), 0) LOOP
        UPDATE ledger_balance
           SET posted_minor = posted_minor + c_posted[i],
               pending_out_minor = pending_out_minor + c_pending_out[i],
               pending_in_minor = pending_in_minor + c_pending_in[i],
               version = version + c_entries[i]
         WHERE account_id = c_account[i] AND shard = c_shard[i]
           AND (allow_negative OR posted_minor + c_posted[i] - (pending_out_minor + c_pending_out[i]) >= 0)
        RETURNING posted_minor, version INTO v_posted, v_new_version;
        IF NOT FOUND THEN
            SELECT sum(posted_minor - pending_out_minor) INTO v_available
              FROM ledger_balance WHERE account_id = c_account[i];
            IF NOT EXISTS (SELECT 1 FROM ledger_balance WHERE account_id = c_account[i] AND shard = c_shard[i]) THEN
                RAISE EXCEPTION 'ledger account % has no balance row for shard %', c_account[i], c_shard[i]
                    USING ERRCODE = 'LDG02';
            END IF;
            RAISE EXCEPTION 'insufficient funds on ledger account %', c_account[i]
                USING ERRCODE = 'LDG01',
                      DETAIL = json_build_object('account_id', c_account[i], 'available_minor', v_available)::text;
        END IF;
        v_running[i] := v_posted - c_posted[i];
        v_version[i] := v_new_version - c_entries[i];
    END LOOP;

    IF v_txn IS NULL THEN
        RETURN NULL;
    END IF;
    FOR i IN 1 .. coalesce(array_length(e_change, 1), 0) LOOP
        j := e_change[i];
        v_running[j] := v_running[j] + e_delta[i];
        v_version[j] := v_version[j] + 1;
        v_balance_after[i] := v_running[j];
        v_version_after[i] := v_version[j];
    END LOOP;
    INSERT INTO ledger_entry
        (transaction_id, account_id, shard, amount_minor, currency, balance_after_minor, version_after, created_at)
    SELECT v_txn, c_account[e.change], c_shard[e.change], e.amount, e.currency, e.balance_after, e.version_after,
           clock_timestamp()
      FROM unnest(e_change, e_amount, e_currency, v_balance_after, v_version_after)
           AS e(change, amount, currency, balance_after, version_after);
    RETURN v_txn;
END $$;
"""

BACKWARD = """
DROP FUNCTION IF EXISTS ledger_post(
    text, text, text, text, jsonb, timestamptz, timestamptz, bigint,
    bigint[], int[], bigint[], bigint[], bigint[], int[], int[], bigint[], text[], bigint[],
    bigint[], text[], text[], text[], int[]
);
"""


class Migration(migrations.Migration):
    dependencies = [("ledger", "0003_trim_indexes")]
    operations = [RunSQLOnPostgres(FORWARD, BACKWARD)]
