"""Ledger API shapes. Money is integer minor units plus an ISO 4217 currency, never a decimal or float."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from django.utils import timezone
from rest_framework import serializers

from core.api import BoundedDateTimeField
from ledger.models import Account, Entry, Transaction

STATEMENT_DEFAULT_DAYS = 30
STATEMENT_MAX_DAYS = 366


class AccountSerializer(serializers.ModelSerializer):
    """An account with its balances (summed over shards), in the account's normal direction."""

    posted_minor = serializers.IntegerField(read_only=True)
    pending_out_minor = serializers.IntegerField(read_only=True, help_text="Pending holds that will lower the balance.")
    pending_in_minor = serializers.IntegerField(read_only=True, help_text="Pending holds that will raise the balance.")
    available_minor = serializers.SerializerMethodField(help_text="posted_minor - pending_out_minor.")

    class Meta:
        model = Account
        fields = (
            "code",
            "name",
            "type",
            "currency",
            "posted_minor",
            "pending_out_minor",
            "pending_in_minor",
            "available_minor",
        )
        read_only_fields = fields

    def get_available_minor(self, account: Account) -> int:
        return account.posted_minor - account.pending_out_minor  # type: ignore[attr-defined]


class StatementQuerySerializer(serializers.Serializer):
    since = BoundedDateTimeField(required=False, help_text="ISO 8601; default: 30 days before `until`.")
    until = BoundedDateTimeField(required=False, help_text="ISO 8601; default: now.")

    def validate(self, attrs: dict[str, Any]) -> dict[str, datetime]:
        until = attrs.get("until") or timezone.now()
        since = attrs.get("since") or until - timedelta(days=STATEMENT_DEFAULT_DAYS)
        if since >= until:
            raise serializers.ValidationError({"since": "must be earlier than until"})
        if until - since > timedelta(days=STATEMENT_MAX_DAYS):
            raise serializers.ValidationError({"since": f"a statement covers at most {STATEMENT_MAX_DAYS} days"})
        return {"since": since, "until": until}


class StatementLineSerializer(serializers.Serializer):
    entry_id = serializers.IntegerField()
    transaction_id = serializers.IntegerField()
    created_at = serializers.DateTimeField()
    event_at = serializers.DateTimeField()
    kind = serializers.CharField()
    description = serializers.CharField()
    amount_minor = serializers.IntegerField(source="amount.minor", help_text="Positive raises the balance.")
    balance_after_minor = serializers.IntegerField(source="balance_after.minor")


class StatementSerializer(serializers.Serializer):
    account = serializers.CharField(source="account.code")
    currency = serializers.CharField(source="account.currency")
    since = serializers.DateTimeField()
    until = serializers.DateTimeField()
    opening_minor = serializers.IntegerField(source="opening.minor")
    closing_minor = serializers.IntegerField(source="closing.minor")
    lines = StatementLineSerializer(many=True)


class TransactionReverseSerializer(serializers.Serializer):
    reason = serializers.CharField(max_length=200, help_text="Why the transaction is reversed; kept on the reversal.")


class EntrySerializer(serializers.ModelSerializer):
    account = serializers.CharField(source="account.code")
    amount_minor = serializers.IntegerField(help_text="Debit positive, credit negative.")

    class Meta:
        model = Entry
        fields = ("account", "amount_minor", "currency")
        read_only_fields = fields


class TransactionSerializer(serializers.ModelSerializer):
    reverses = serializers.IntegerField(source="reverses_id", allow_null=True, help_text="Id of the reversed one.")
    entries = EntrySerializer(many=True, read_only=True)

    class Meta:
        model = Transaction
        fields = ("id", "kind", "description", "event_at", "created_at", "reverses", "entries")
        read_only_fields = fields
