"""The entry rules checked once per statement and once per transaction, not once per entry.

Migration 0002 checked every entry row on its own: a deferred zero-sum trigger per entry, and three
foreign key checks per entry (transaction, account, account with currency), each a query and a row
lock on the account (so every posting to a hot account took a share lock on its one account row).
A batch of 1,000 postings spent about half its database time there. The rules stay; they are
checked in sets:

1. `ledger_entry_checks`, a statement-level AFTER INSERT trigger, reads the rows the statement
   added (a transition table) and refuses the statement when
   - its entries do not sum to zero per transaction and currency (a transaction's entries are
     written in one statement, and nothing unbalanced is ever added to a transaction);
   - an entry names an account that does not exist or is not in the entry's currency;
   - an entry names a transaction that does not exist.
   Each look-up is an index probe per row (`OFFSET 0` keeps the planner from turning it into a
   join: the plan is kept for the session, and a hash join planned for one big statement would
   read the whole table on every later one).
2. `ledger_transaction_complete`, the deferred constraint trigger on each transaction (it replaces
   `ledger_transaction_has_entries`), checks at commit that the transaction has entries and that
   they sum to zero per currency.
3. What the foreign keys also guaranteed is kept by triggers: an account is never deleted and never
   changes its id (transactions and entries were already append-only).
"""

import django.db.models.deletion
from django.db import migrations, models

from core.migrations_util import RunSQLOnPostgres

FORWARD = """
DROP TRIGGER ledger_entry_balanced ON ledger_entry;
DROP FUNCTION ledger_check_transaction_balanced();
DROP TRIGGER ledger_transaction_has_entries ON ledger_transaction;
DROP FUNCTION ledger_check_transaction_has_entries();
ALTER TABLE ledger_entry DROP CONSTRAINT ledger_entry_account_currency_fk;

CREATE FUNCTION ledger_check_entries_added() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    bad record;
BEGIN
    -- One query (each query of a trigger costs as much as its rows here): the statement's entries per
    -- transaction and currency, with their sum, an account that is not in that currency, if any, and
    -- whether the transaction exists.
    SELECT g.transaction_id, g.currency, g.total, g.wrong_account,
           NOT EXISTS (SELECT 1 FROM ledger_transaction t WHERE t.id = g.transaction_id OFFSET 0) AS no_transaction
      INTO bad
      FROM (SELECT e.transaction_id, e.currency, SUM(e.amount_minor) AS total,
                   MIN(e.account_id) FILTER (WHERE NOT EXISTS (
                       SELECT 1 FROM ledger_account a WHERE a.id = e.account_id AND a.currency = e.currency OFFSET 0
                   )) AS wrong_account
              FROM added e GROUP BY e.transaction_id, e.currency) g
     WHERE g.total <> 0 OR g.wrong_account IS NOT NULL
        OR NOT EXISTS (SELECT 1 FROM ledger_transaction t WHERE t.id = g.transaction_id OFFSET 0)
     LIMIT 1;
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;
    IF bad.wrong_account IS NOT NULL THEN
        RAISE EXCEPTION 'ledger entry names account %, which does not exist in %', bad.wrong_account, bad.currency
            USING ERRCODE = 'foreign_key_violation';
    END IF;
    IF bad.no_transaction THEN
        RAISE EXCEPTION 'ledger entry names transaction %, which does not exist', bad.transaction_id
            USING ERRCODE = 'foreign_key_violation';
    END IF;
    RAISE EXCEPTION 'ledger transaction % does not balance: % % in one statement',
        bad.transaction_id, bad.total, bad.currency USING ERRCODE = 'check_violation';
END $$;
CREATE TRIGGER ledger_entry_checks AFTER INSERT ON ledger_entry REFERENCING NEW TABLE AS added
    FOR EACH STATEMENT EXECUTE FUNCTION ledger_check_entries_added();

CREATE FUNCTION ledger_check_transaction_complete() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    sums record;
BEGIN
    SELECT COUNT(*) AS currencies, COUNT(*) FILTER (WHERE total <> 0) AS unbalanced INTO sums
      FROM (SELECT SUM(amount_minor) AS total FROM ledger_entry WHERE transaction_id = NEW.id GROUP BY currency) t;
    IF sums.currencies = 0 THEN
        RAISE EXCEPTION 'ledger transaction % has no entries', NEW.id USING ERRCODE = 'check_violation';
    END IF;
    IF sums.unbalanced > 0 THEN
        RAISE EXCEPTION 'ledger transaction % does not balance', NEW.id USING ERRCODE = 'check_violation';
    END IF;
    RETURN NULL;
END $$;
CREATE CONSTRAINT TRIGGER ledger_transaction_complete
    AFTER INSERT ON ledger_transaction DEFERRABLE INITIALLY DEFERRED
    FOR EACH ROW EXECUTE FUNCTION ledger_check_transaction_complete();

CREATE FUNCTION ledger_account_keep() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        RAISE EXCEPTION 'ledger account % cannot be deleted: entries and balances name it', OLD.code
            USING ERRCODE = 'integrity_constraint_violation';
    END IF;
    IF NEW.id <> OLD.id THEN
        RAISE EXCEPTION 'ledger account %: id cannot change', OLD.code USING ERRCODE = 'integrity_constraint_violation';
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER ledger_account_keep BEFORE UPDATE OF id OR DELETE ON ledger_account
    FOR EACH ROW EXECUTE FUNCTION ledger_account_keep();
"""

BACKWARD = """
DROP TRIGGER ledger_account_keep ON ledger_account;
DROP FUNCTION ledger_account_keep();
DROP TRIGGER ledger_transaction_complete ON ledger_transaction;
DROP FUNCTION ledger_check_transaction_complete();
DROP TRIGGER ledger_entry_checks ON ledger_entry;
DROP FUNCTION ledger_check_entries_added();

ALTER TABLE ledger_entry ADD CONSTRAINT ledger_entry_account_currency_fk
    FOREIGN KEY (account_id, currency) REFERENCES ledger_account (id, currency);
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
"""


class Migration(migrations.Migration):
    dependencies = [("ledger", "0006_ledger_post_many")]

    operations = [
        migrations.AlterField(
            model_name="entry",
            name="account",
            field=models.ForeignKey(
                db_constraint=False,
                db_index=False,
                on_delete=django.db.models.deletion.PROTECT,
                related_name="entries",
                to="ledger.account",
            ),
        ),
        migrations.AlterField(
            model_name="entry",
            name="transaction",
            field=models.ForeignKey(
                db_constraint=False,
                on_delete=django.db.models.deletion.PROTECT,
                related_name="entries",
                to="ledger.transaction",
            ),
        ),
        RunSQLOnPostgres(FORWARD, BACKWARD),
    ]
