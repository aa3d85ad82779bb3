"""Finance staff UI for the ledger: read-only views and one action that calls `transaction_reverse`.

Nothing here writes ledger rows itself; amounts are shown with their currency via `Money.format()`.
"""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin, messages
from django.contrib.admin import helpers
from django.db.models import Exists, OuterRef, QuerySet
from django.http import HttpRequest
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils.html import format_html
from django.utils.safestring import SafeString

from core.admin import ReadOnlyAdmin, ReadOnlyInline
from core.errors import AppError
from core.list_filters import IndexedValuesFilter
from core.money import Money
from core.paginators import LargeTableAdminMixin
from ledger.models import Account, Entry, Hold, Transaction
from ledger.selectors import accounts_with_balances
from ledger.services import transaction_reverse

REVERSE_PERMISSION = "ledger.reverse_transaction"
MAX_REVERSALS_PER_ACTION = 50


def _money(minor: int | None, currency: str) -> str:
    return "" if minor is None else Money(minor, currency).format()


def _transaction_link(transaction_id: int | None) -> str:
    if transaction_id is None:
        return "-"
    url = reverse("admin:ledger_transaction_change", args=[transaction_id])
    return format_html('<a href="{}">#{}</a>', url, transaction_id)


# --- accounts -------------------------------------------------------------------


@admin.register(Account)
class AccountAdmin(ReadOnlyAdmin):
    list_display = (
        "code",
        "name",
        "type",
        "currency",
        "allow_negative",
        "owner",
        "posted",
        "pending_out",
        "pending_in",
        "available",
    )
    list_filter = ("type", "currency", "allow_negative")
    search_fields = ("code", "name", "=owner_id")
    fields = (
        ("code", "name"),
        ("type", "currency", "allow_negative"),
        ("owner_type", "owner_id"),
        "balance_shards",
        "created_at",
        ("posted", "pending_out", "pending_in", "available"),
    )
    readonly_fields = ("created_at", "posted", "pending_out", "pending_in", "available")

    def get_queryset(self, request: HttpRequest) -> QuerySet[Account]:
        return accounts_with_balances()

    @admin.display(description="Owner")
    def owner(self, account: Account) -> str:
        return f"{account.owner_type}:{account.owner_id}" if account.owner_type else "-"

    @admin.display(description="Posted", ordering="posted_minor")
    def posted(self, account: Account) -> str:
        return _money(account.posted_minor, account.currency)  # type: ignore[attr-defined]

    @admin.display(description="Pending out", ordering="pending_out_minor")
    def pending_out(self, account: Account) -> str:
        return _money(account.pending_out_minor, account.currency)  # type: ignore[attr-defined]

    @admin.display(description="Pending in", ordering="pending_in_minor")
    def pending_in(self, account: Account) -> str:
        return _money(account.pending_in_minor, account.currency)  # type: ignore[attr-defined]

    @admin.display(description="Available")
    def available(self, account: Account) -> str:
        available = account.posted_minor - account.pending_out_minor  # type: ignore[attr-defined]
        return _money(available, account.currency)


# --- transactions ---------------------------------------------------------------


class EntryInline(ReadOnlyInline):
    model = Entry
    fields = ("account", "shard", "debit", "credit", "balance_after", "version_after")

    def get_queryset(self, request: HttpRequest) -> QuerySet[Entry]:
        return super().get_queryset(request).select_related("account")

    @admin.display(description="Debit")
    def debit(self, entry: Entry) -> str:
        return _money(entry.amount_minor, entry.currency) if entry.amount_minor > 0 else ""

    @admin.display(description="Credit")
    def credit(self, entry: Entry) -> str:
        return _money(-entry.amount_minor, entry.currency) if entry.amount_minor < 0 else ""

    @admin.display(description="Shard balance after")
    def balance_after(self, entry: Entry) -> str:
        return _money(entry.balance_after_minor, entry.currency)


class ReversedFilter(admin.SimpleListFilter):
    title = "reversed"
    parameter_name = "reversed"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [("yes", "Reversed"), ("no", "Not reversed")]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Transaction]) -> QuerySet[Transaction]:
        if self.value() in ("yes", "no"):
            return queryset.filter(is_reversed=self.value() == "yes")
        return queryset


class IsReversalFilter(admin.SimpleListFilter):
    title = "is a reversal"
    parameter_name = "is_reversal"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [("yes", "Reversals"), ("no", "Originals")]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Transaction]) -> QuerySet[Transaction]:
        if self.value() in ("yes", "no"):
            return queryset.filter(reverses__isnull=self.value() == "no")
        return queryset


class ReverseReasonForm(forms.Form):
    reason = forms.CharField(
        max_length=200,
        widget=forms.TextInput(attrs={"size": 80}),
        help_text="Recorded on the reversal transaction and in the audit log.",
    )


@admin.register(Transaction)
class TransactionAdmin(LargeTableAdminMixin, ReadOnlyAdmin):
    list_display = ("id", "kind", "description", "event_at", "created_at", "reverses_link", "is_reversed")
    list_filter = (("kind", IndexedValuesFilter), ReversedFilter, IsReversalFilter, "event_at", "created_at")
    search_fields = ("idempotency_key__exact",)  # the unique key's index; a description scan reads every row
    inlines = (EntryInline,)
    actions = ("reverse_selected",)
    fields = (
        ("idempotency_key", "request_hash"),
        ("kind", "description"),
        ("event_at", "created_at"),
        ("reverses", "reversed_by_link"),
        "metadata",
    )
    readonly_fields = ("reversed_by_link",)

    def get_queryset(self, request: HttpRequest) -> QuerySet[Transaction]:
        reversal = Transaction.objects.filter(reverses_id=OuterRef("pk"))
        return super().get_queryset(request).annotate(is_reversed=Exists(reversal))

    @admin.display(description="Reverses", ordering="reverses_id")
    def reverses_link(self, txn: Transaction) -> str:
        return _transaction_link(txn.reverses_id)

    @admin.display(description="Reversed", boolean=True)
    def is_reversed(self, txn: Transaction) -> bool:
        return bool(txn.is_reversed)  # type: ignore[attr-defined]

    @admin.display(description="Reversed by")
    def reversed_by_link(self, txn: Transaction) -> str:
        reversal_id = Transaction.objects.filter(reverses_id=txn.pk).values_list("pk", flat=True).first()
        return _transaction_link(reversal_id)

    def has_reverse_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm(REVERSE_PERMISSION)

    @admin.action(description="Reverse selected transactions", permissions=["reverse"])
    def reverse_selected(self, request: HttpRequest, queryset: QuerySet[Transaction]) -> TemplateResponse | None:
        transactions = list(queryset.order_by("pk")[: MAX_REVERSALS_PER_ACTION + 1])
        if len(transactions) > MAX_REVERSALS_PER_ACTION:
            self.message_user(
                request,
                f"Select at most {MAX_REVERSALS_PER_ACTION} transactions to reverse at once.",
                level=messages.ERROR,
            )
            return None
        form = ReverseReasonForm(request.POST if request.POST.get("post") == "yes" else None)
        if not form.is_valid():
            return self._reverse_confirmation(request, transactions, form)
        for txn in transactions:
            self._reverse_one(request, txn, form.cleaned_data["reason"])
        return None

    def _reverse_confirmation(
        self, request: HttpRequest, transactions: list[Transaction], form: ReverseReasonForm
    ) -> TemplateResponse:
        request.current_app = self.admin_site.name
        context = {
            **self.admin_site.each_context(request),
            "title": "Reverse transactions",
            "opts": self.opts,
            "transactions": transactions,
            "form": form,
            "action_checkbox_name": helpers.ACTION_CHECKBOX_NAME,
            "changelist_url": reverse("admin:ledger_transaction_changelist", current_app=self.admin_site.name),
        }
        return TemplateResponse(request, "admin/ledger/transaction/reverse_confirmation.html", context)

    def _reverse_one(self, request: HttpRequest, txn: Transaction, reason: str) -> None:
        try:
            reversal = transaction_reverse(transaction_id=txn.pk, reason=reason, actor=request.user)
        except AppError as error:
            self.message_user(
                request, f"Transaction #{txn.pk}: {error.user_message} {error.action_required}", level=messages.ERROR
            )
            return
        message: SafeString = format_html("Transaction #{} reversed by {}.", txn.pk, _transaction_link(reversal.pk))
        self.message_user(request, message, level=messages.SUCCESS)


# --- holds ----------------------------------------------------------------------


@admin.register(Hold)
class HoldAdmin(ReadOnlyAdmin):
    list_display = (
        "id",
        "status",
        "kind",
        "debit_account",
        "credit_account",
        "amount",
        "posted",
        "expires_at",
        "created_at",
        "posted_transaction_link",
    )
    list_filter = ("status", "currency", "kind")
    list_select_related = ("debit_account", "credit_account")
    search_fields = ("=idempotency_key", "description")
    show_full_result_count = False
    readonly_fields = ("amount", "posted", "posted_transaction_link")
    exclude = ("amount_minor", "posted_minor", "posted_transaction")

    @admin.display(description="Amount", ordering="amount_minor")
    def amount(self, hold: Hold) -> str:
        return _money(hold.amount_minor, hold.currency)

    @admin.display(description="Posted", ordering="posted_minor")
    def posted(self, hold: Hold) -> str:
        return _money(hold.posted_minor, hold.currency) if hold.posted_minor else "-"

    @admin.display(description="Posted transaction")
    def posted_transaction_link(self, hold: Hold) -> str:
        return _transaction_link(hold.posted_transaction_id)
