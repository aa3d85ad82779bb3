"""The only writer of the ledger.

Invariants kept by this package (and, on PostgreSQL, by the database as well):
- every transaction balances to zero per currency and has at least two legs;
- an entry's currency is its account's currency;
- an account that may not go negative never does, counting pending holds;
- a posting is applied once per idempotency key; the same key with a
  different request is refused (`IdempotencyMismatch`);
- a transaction is reversed at most once, and a hold is settled at most once.

The modules, by what they do (each states the invariants it keeps):
- `posting`: legs, retries on conflict, posting a balanced transaction and
  reversing one; how a write plan is built and applied by `ledger.writer`;
- `accounts`: creating accounts and the platform's accounts, and the account
  facts each process remembers;
- `holds`: reserving money, posting or releasing it, expiring due holds;
- `batch`: posting in bulk: many transactions, or many holds posted and voided, in one call and one
  commit, each transaction still idempotent by its own key (applied by `ledger.batch`).

Import from `ledger.services`: every name other apps use is re-exported here.
"""

from ledger.services.accounts import PlatformAccount, account_create, forget_account_facts, platform_accounts
from ledger.services.batch import HoldPosting, PostingRequest, holds_settle_many, transactions_post_many
from ledger.services.holds import (
    HoldRequest,
    hold_create,
    hold_expire,
    hold_post,
    hold_void,
    holds_create_many,
    holds_expire_due,
)
from ledger.services.posting import (
    RETRYABLE_SQLSTATES,
    Leg,
    credit,
    debit,
    retry_on_conflict,
    transaction_post,
    transaction_reverse,
)

__all__ = [
    "RETRYABLE_SQLSTATES",
    "HoldPosting",
    "HoldRequest",
    "Leg",
    "PlatformAccount",
    "PostingRequest",
    "account_create",
    "credit",
    "debit",
    "forget_account_facts",
    "hold_create",
    "hold_expire",
    "hold_post",
    "hold_void",
    "holds_create_many",
    "holds_expire_due",
    "holds_settle_many",
    "platform_accounts",
    "retry_on_conflict",
    "transaction_post",
    "transaction_reverse",
    "transactions_post_many",
]
