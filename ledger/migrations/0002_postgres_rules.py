"""The ledger's rules, enforced by PostgreSQL itself (see ledger/models.py)."""

from django.db import migrations

from core.migrations_util import RunSQLOnPostgres

FORWARD = """
-- 1. Zero-sum per currency per transaction, checked at commit; and no empty transactions.
CREATE FUNCTION ledger_check_transaction_balanced() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    bad record;
BEGIN
    SELECT currency, SUM(amount_minor) AS total INTO bad
      FROM ledger_entry WHERE transaction_id = NEW.transaction_id
     GROUP BY currency HAVING SUM(amount_minor) <> 0 LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'ledger transaction % does not balance: % %', NEW.transaction_id, bad.total, bad.currency
            USING ERRCODE = 'check_violation';
    END IF;
    RETURN NULL;
END $$;

CREATE FUNCTION ledger_check_transaction_has_entries() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM ledger_entry WHERE transaction_id = NEW.id) THEN
        RAISE EXCEPTION 'ledger transaction % has no entries', NEW.id USING ERRCODE = 'check_violation';
    END IF;
    RETURN NULL;
END $$;

CREATE CONSTRAINT TRIGGER ledger_entry_balanced
    AFTER INSERT ON ledger_entry DEFERRABLE INITIALLY DEFERRED
    FOR EACH ROW EXECUTE FUNCTION ledger_check_transaction_balanced();
CREATE CONSTRAINT TRIGGER ledger_transaction_has_entries
    AFTER INSERT ON ledger_transaction DEFERRABLE INITIALLY DEFERRED
    FOR EACH ROW EXECUTE FUNCTION ledger_check_transaction_has_entries();

-- 2. Append-only journal.
CREATE FUNCTION ledger_reject_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '% on % is not allowed: the ledger is append-only; post a reversal instead',
        TG_OP, TG_TABLE_NAME USING ERRCODE = 'integrity_constraint_violation';
END $$;
CREATE TRIGGER ledger_entry_append_only BEFORE UPDATE OR DELETE ON ledger_entry
    FOR EACH ROW EXECUTE FUNCTION ledger_reject_change();
CREATE TRIGGER ledger_transaction_append_only BEFORE UPDATE OR DELETE ON ledger_transaction
    FOR EACH ROW EXECUTE FUNCTION ledger_reject_change();

-- 3. An entry's currency is its account's currency.
ALTER TABLE ledger_entry ADD CONSTRAINT ledger_entry_account_currency_fk
    FOREIGN KEY (account_id, currency) REFERENCES ledger_account (id, currency);

-- 5. What balances and entries depend on never changes on an account.
CREATE FUNCTION ledger_account_keep_rules() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF (NEW.currency, NEW.type, NEW.allow_negative, NEW.balance_shards)
       IS DISTINCT FROM (OLD.currency, OLD.type, OLD.allow_negative, OLD.balance_shards) THEN
        RAISE EXCEPTION 'ledger account %: currency, type, allow_negative and balance_shards cannot change', OLD.code
            USING ERRCODE = 'integrity_constraint_violation';
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER ledger_account_keep_rules BEFORE UPDATE ON ledger_account
    FOR EACH ROW EXECUTE FUNCTION ledger_account_keep_rules();

-- 4. A balance row keeps its account's sign rule (the CHECK on the row does the rest).
CREATE FUNCTION ledger_balance_matches_account() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.allow_negative IS DISTINCT FROM (SELECT allow_negative FROM ledger_account WHERE id = NEW.account_id)
       OR NEW.shard >= (SELECT balance_shards FROM ledger_account WHERE id = NEW.account_id) THEN
        RAISE EXCEPTION 'balance row (%, %) does not match its account', NEW.account_id, NEW.shard
            USING ERRCODE = 'integrity_constraint_violation';
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER ledger_balance_matches_account BEFORE INSERT ON ledger_balance
    FOR EACH ROW EXECUTE FUNCTION ledger_balance_matches_account();
CREATE TRIGGER ledger_balance_keeps_sign_rule BEFORE UPDATE OF allow_negative, account_id, shard ON ledger_balance
    FOR EACH ROW EXECUTE FUNCTION ledger_balance_matches_account();
"""

BACKWARD = """
DROP TRIGGER IF EXISTS ledger_balance_keeps_sign_rule ON ledger_balance;
DROP TRIGGER IF EXISTS ledger_balance_matches_account ON ledger_balance;
DROP FUNCTION IF EXISTS ledger_balance_matches_account();
DROP TRIGGER IF EXISTS ledger_account_keep_rules ON ledger_account;
DROP FUNCTION IF EXISTS ledger_account_keep_rules();
ALTER TABLE ledger_entry DROP CONSTRAINT IF EXISTS ledger_entry_account_currency_fk;
DROP TRIGGER IF EXISTS ledger_transaction_append_only ON ledger_transaction;
DROP TRIGGER IF EXISTS ledger_entry_append_only ON ledger_entry;
DROP FUNCTION IF EXISTS ledger_reject_change();
DROP TRIGGER IF EXISTS ledger_transaction_has_entries ON ledger_transaction;
DROP TRIGGER IF EXISTS ledger_entry_balanced ON ledger_entry;
DROP FUNCTION IF EXISTS ledger_check_transaction_has_entries();
DROP FUNCTION IF EXISTS ledger_check_transaction_balanced();
"""


class Migration(migrations.Migration):
    dependencies = [("ledger", "0001_initial")]
    operations = [RunSQLOnPostgres(FORWARD, BACKWARD)]
