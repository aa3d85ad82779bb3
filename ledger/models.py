"""The double-entry ledger.

Sign convention: `Entry.amount_minor` is debit-positive. A debit is > 0, a
credit < 0, and the entries of every transaction sum to zero per currency.

Balances are kept in each account's normal direction, as an accountant reads
them: asset and expense accounts grow with debits, liability, equity and
revenue accounts grow with credits. `Account.normal_sign` converts:
balance change = amount_minor * normal_sign.

Invariants, enforced by PostgreSQL (migrations 0002 and 0007) and mirrored
in `ledger.services` for SQLite:
1. a transaction's entries sum to zero per currency, and a transaction has
   entries (a deferred constraint trigger, once per transaction at commit);
   the entries one INSERT statement adds balance per transaction and
   currency as well (a statement trigger), so a transaction's entries are
   written in one statement and nothing unbalanced joins a posted one;
2. transactions and entries are append-only (UPDATE and DELETE rejected);
3. an entry names an existing transaction, and an account in the entry's
   currency (the same statement trigger); accounts are never deleted and
   keep their id;
4. an account that may not go negative never does, counting pending holds
   (CHECK constraint on its balance row: posted - pending_out >= 0);
5. an account's currency, type, sign rule and shard count never change.

Hot accounts (those allowed to go negative) have several balance rows
("shards"); a writer updates one of them, so concurrent postings to the same
hot account do not queue on a single row. The account's balance is the sum of
its shards. Every other account has exactly one balance row, shard 0.
"""

from __future__ import annotations

from django.db import models
from django.db.models import F, Q
from django.utils import timezone

from core.models import TimestampedModel
from core.money import Money


class Account(models.Model):
    class Type(models.TextChoices):
        ASSET = "asset"
        LIABILITY = "liability"
        EQUITY = "equity"
        REVENUE = "revenue"
        EXPENSE = "expense"

    DEBIT_NORMAL_TYPES = frozenset({Type.ASSET, Type.EXPENSE})

    code = models.CharField(max_length=100, unique=True, help_text="Stable identifier, e.g. user:42:wallet:USD.")
    name = models.CharField(max_length=200)
    type = models.CharField(max_length=20, choices=Type.choices)
    currency = models.CharField(max_length=3)
    owner_type = models.CharField(max_length=50, blank=True, help_text="What owns the account, e.g. 'user'.")
    owner_id = models.CharField(max_length=64, blank=True)
    allow_negative = models.BooleanField(
        default=False, help_text="Platform and clearing accounts may go negative; customer accounts never."
    )
    balance_shards = models.PositiveSmallIntegerField(default=1)
    created_at = models.DateTimeField(default=timezone.now, editable=False)

    class Meta:
        ordering = ["code"]
        indexes = [models.Index(fields=["owner_type", "owner_id"])]
        constraints = [
            # Its index answers the entry check of migration 0007: the account exists in the entry's currency.
            models.UniqueConstraint(fields=["id", "currency"], name="ledger_account_id_currency_uniq"),
            models.CheckConstraint(
                condition=Q(balance_shards__gte=1) & (Q(allow_negative=True) | Q(balance_shards=1)),
                name="ledger_account_shards_only_for_hot",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.code} ({self.currency})"

    @property
    def normal_sign(self) -> int:
        return 1 if self.type in self.DEBIT_NORMAL_TYPES else -1


class Transaction(models.Model):
    """One journal entry: a balanced set of entries posted together."""

    idempotency_key = models.CharField(max_length=255)
    request_hash = models.CharField(max_length=64)
    kind = models.CharField(max_length=50)
    description = models.CharField(max_length=255, blank=True)
    metadata = models.JSONField(default=dict, blank=True)
    event_at = models.DateTimeField(help_text="When it happened in the world.")
    created_at = models.DateTimeField(default=timezone.now, help_text="When the ledger recorded it.")
    reverses = models.ForeignKey(
        "self", null=True, blank=True, on_delete=models.PROTECT, related_name="reversals", db_index=False
    )

    class Meta:
        ordering = ["-id"]
        indexes = [models.Index(fields=["event_at"])]
        constraints = [
            # Plain unique constraints (not unique=True) so PostgreSQL builds no extra pattern index.
            models.UniqueConstraint(fields=["idempotency_key"], name="ledger_transaction_key_uniq"),
            models.UniqueConstraint(
                fields=["reverses"], condition=Q(reverses__isnull=False), name="ledger_transaction_reversed_once"
            ),
        ]
        permissions = [("reverse_transaction", "Can reverse a ledger transaction")]

    def __str__(self) -> str:
        return f"#{self.pk} {self.kind}"


class Entry(models.Model):
    """One leg of a transaction on one balance shard of one account."""

    # On PostgreSQL one statement-level trigger checks both references for all the rows an INSERT adds
    # (migration 0007), instead of a foreign key check and row lock per entry.
    transaction = models.ForeignKey(Transaction, on_delete=models.PROTECT, related_name="entries", db_constraint=False)
    # Indexed by the composite indexes below, which start with the account.
    account = models.ForeignKey(
        Account, on_delete=models.PROTECT, related_name="entries", db_index=False, db_constraint=False
    )
    shard = models.PositiveSmallIntegerField(default=0)
    amount_minor = models.BigIntegerField(help_text="Debit positive, credit negative.")
    currency = models.CharField(max_length=3)
    balance_after_minor = models.BigIntegerField(help_text="The shard's balance after this entry.")
    version_after = models.BigIntegerField(help_text="The shard's entry count after this entry.")
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["id"]
        verbose_name_plural = "entries"
        indexes = [models.Index(fields=["account", "shard", "created_at"])]
        constraints = [
            models.UniqueConstraint(fields=["account", "shard", "version_after"], name="ledger_entry_version_uniq"),
            models.CheckConstraint(condition=~Q(amount_minor=0), name="ledger_entry_amount_nonzero"),
        ]

    def __str__(self) -> str:
        side = "debit" if self.amount_minor > 0 else "credit"
        return f"{side} {Money(abs(self.amount_minor), self.currency).format()}"


class Balance(models.Model):
    """The current balance of one shard of an account, in its normal direction."""

    account = models.ForeignKey(Account, on_delete=models.PROTECT, related_name="balances")
    shard = models.PositiveSmallIntegerField(default=0)
    allow_negative = models.BooleanField(help_text="Copied from the account; it never changes.")
    posted_minor = models.BigIntegerField(default=0)
    pending_out_minor = models.BigIntegerField(default=0, help_text="Pending holds that will lower the balance.")
    pending_in_minor = models.BigIntegerField(default=0, help_text="Pending holds that will raise the balance.")
    version = models.BigIntegerField(default=0, help_text="Entries posted to this shard.")

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["account", "shard"], name="ledger_balance_account_shard_uniq"),
            models.CheckConstraint(
                condition=Q(pending_out_minor__gte=0) & Q(pending_in_minor__gte=0), name="ledger_balance_pending_gte_0"
            ),
            models.CheckConstraint(
                condition=Q(allow_negative=True) | Q(posted_minor__gte=F("pending_out_minor")),
                name="ledger_balance_available_gte_0",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.account_id}/{self.shard}: {self.posted_minor}"


class Hold(TimestampedModel):
    """A reserved movement from one account to another: posted later, or voided, or expired."""

    class Status(models.TextChoices):
        PENDING = "pending"
        POSTED = "posted"
        VOIDED = "voided"
        EXPIRED = "expired"

    TRANSITIONS = {
        Status.PENDING: {Status.POSTED, Status.VOIDED, Status.EXPIRED},
        Status.POSTED: set(),
        Status.VOIDED: set(),
        Status.EXPIRED: set(),
    }

    idempotency_key = models.CharField(max_length=255)
    request_hash = models.CharField(max_length=64)
    status = models.CharField(max_length=20, choices=Status.choices, default=Status.PENDING)
    debit_account = models.ForeignKey(Account, on_delete=models.PROTECT, related_name="debit_holds")
    debit_shard = models.PositiveSmallIntegerField(default=0)
    credit_account = models.ForeignKey(Account, on_delete=models.PROTECT, related_name="credit_holds")
    credit_shard = models.PositiveSmallIntegerField(default=0)
    amount_minor = models.BigIntegerField()
    currency = models.CharField(max_length=3)
    posted_minor = models.BigIntegerField(default=0)
    kind = models.CharField(max_length=50)
    description = models.CharField(max_length=255, blank=True)
    metadata = models.JSONField(default=dict, blank=True)
    expires_at = models.DateTimeField(null=True, blank=True)
    posted_transaction = models.OneToOneField(
        Transaction, null=True, blank=True, on_delete=models.PROTECT, related_name="from_hold"
    )

    class Meta:
        ordering = ["-id"]
        indexes = [models.Index(fields=["status", "expires_at"])]
        constraints = [
            models.UniqueConstraint(fields=["idempotency_key"], name="ledger_hold_key_uniq"),
            models.CheckConstraint(condition=Q(amount_minor__gt=0), name="ledger_hold_amount_positive"),
            models.CheckConstraint(
                condition=Q(posted_minor__gte=0) & Q(posted_minor__lte=F("amount_minor")),
                name="ledger_hold_posted_within_amount",
            ),
            models.CheckConstraint(condition=~Q(debit_account=F("credit_account")), name="ledger_hold_two_accounts"),
        ]

    def __str__(self) -> str:
        return f"hold #{self.pk} {self.amount_minor} {self.currency} ({self.status})"
