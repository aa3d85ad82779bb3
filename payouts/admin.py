"""Finance staff UI for payouts: cycles, winners (with a CSV import), batches and items.

Money and statuses are read-only everywhere. Every change is an action that calls one payouts service with
request.user and reports the result, or the AppError's user_message and action_required; the services
check the fine permissions themselves, so an action without its permission explains what is missing.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any, TypeVar

from django import forms
from django.contrib import admin, messages
from django.contrib.auth import get_user_model
from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.db.models import Count, QuerySet, Sum
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import URLPattern, path, reverse
from django.utils.html import format_html
from django.utils.safestring import SafeString

from core.admin import ReadOnlyAdmin, ReadOnlyInline, action_confirmed, action_page
from core.errors import AppError
from core.exports import CsvExportMixin
from core.labels import help_column, label_of, status_column
from core.money import Money, MoneyError, money_in_bounds
from core.paginators import LargeTableAdminMixin
from payouts.admin_cycles import PrizePoolFundingMixin
from payouts.models import PayoutBatch, PayoutCycle, PayoutItem, RecipientType, WinnerSelection
from payouts.resources import PayoutItemResource
from payouts.selectors import StatusProgress, movement_status_by_batch, progress_by_batch
from payouts.services import (
    batch_approve,
    batch_execute,
    batch_movements_sync,
    batch_retry_failed,
    cycle_prepare,
    item_cancel_unclaimed,
    selection_problems,
    winner_selections_import,
)
from providers.admin import AuditedConfigAdmin

T = TypeVar("T")
IMPORT_PERMISSION = "payouts.add_winnerselection"


def _money(minor: int | None, currency: str) -> str:
    return "" if minor is None else Money(minor, currency).format()


def _link(viewname: str, pk: int, text: object) -> str:
    return format_html('<a href="{}">{}</a>', reverse(viewname, args=[pk]), text)


# --- reads shared with payouts.api (they belong in payouts/selectors.py) ----------------


def progress_text(progress: Sequence[StatusProgress], currency: str, provider: str = "") -> str:
    """E.g. "Sent to PayPal 3 · $900.00, Paid 1 · $100.00" (statuses in PayoutItem.Status order, core.labels)."""
    label = partial(label_of, "payouts.payoutitem", provider=provider)
    return ", ".join(f"{label(p.status)} {p.count} · {_money(p.amount_minor, currency)}" for p in progress) or "-"


# --- reporting service calls ------------------------------------------------------------


def error_text(label: str, error: AppError) -> str:
    """The user_message and action_required, and the per-winner problems a refused prepare lists."""
    problems = error.details.get("problems") or {}
    listed = "; ".join(f"{name}: {', '.join(found)}" for name, found in problems.items())
    return f"{label}: {error.user_message} {error.action_required}" + (f" Problems: {listed}." if listed else "")


class ServiceActionsMixin(admin.ModelAdmin):
    """Admin actions call one service per object and report each outcome as a message."""

    def attempt(self, request: HttpRequest, label: str, call: Callable[[], T]) -> T | None:
        try:
            return call()
        except AppError as error:
            self.message_user(request, error_text(label, error), messages.ERROR)
            return None

    def confirm(
        self, request: HttpRequest, *, action: str, title: str, objects: Sequence[Any], lines: Sequence[str]
    ) -> TemplateResponse:
        return action_page(self, request, action=action, title=title, objects=objects, lines=lines)


# --- cycles -----------------------------------------------------------------------------


class BatchInline(ReadOnlyInline):
    model = PayoutBatch
    fk_name = "cycle"
    fields = ("batch", "provider", "status", "total", "item_count", "progress", "created_at")

    @admin.display(description="Batch")
    def batch(self, batch: PayoutBatch) -> str:
        return _link("admin:payouts_payoutbatch_change", batch.pk, batch.sender_batch_id)

    @admin.display(description="Total")
    def total(self, batch: PayoutBatch) -> str:
        return _money(batch.total_minor, batch.currency)

    @admin.display(description="Progress")
    def progress(self, batch: PayoutBatch) -> str:
        return progress_text(progress_by_batch([batch.pk]).get(batch.pk, []), batch.currency, batch.provider)


@admin.register(PayoutCycle)
class PayoutCycleAdmin(PrizePoolFundingMixin, ServiceActionsMixin, AuditedConfigAdmin):
    list_display = ("id", "name", "created_by", "created_at", "winner_count", "batches")
    search_fields = ("name",)
    fields = ("name", "created_by", "created_at", "winners", "import_winners")
    readonly_fields = ("created_by", "created_at", "winners", "import_winners")
    inlines = (BatchInline,)
    actions = ("prepare", "fund_prize_pool")

    def get_queryset(self, request: HttpRequest) -> QuerySet[PayoutCycle]:
        return super().get_queryset(request).annotate(winner_count=Count("selections", distinct=True))

    def get_inlines(self, request: HttpRequest, obj: PayoutCycle | None) -> tuple[type[BatchInline], ...]:
        return self.inlines if obj is not None else ()  # a new cycle has no batches

    def save_model(self, request: HttpRequest, obj: PayoutCycle, form: Any, change: bool) -> None:
        if not change:
            obj.created_by = request.user  # type: ignore[assignment]
        super().save_model(request, obj, form, change)

    @admin.display(description="Winners", ordering="winner_count")
    def winner_count(self, cycle: PayoutCycle) -> int:
        return cycle.winner_count  # type: ignore[attr-defined]

    @admin.display(description="Batches")
    def batches(self, cycle: PayoutCycle) -> str:
        counts = cycle.batches.order_by().values_list("status").annotate(n=Count("id"))
        return ", ".join(f"{n} {status}" for status, n in sorted(counts)) or "-"

    @admin.display(description="Winners to pay")
    def winners(self, cycle: PayoutCycle) -> str:
        if cycle.pk is None:
            return "-"
        totals = cycle.selections.order_by().values_list("currency").annotate(n=Count("id"), total=Sum("amount_minor"))
        return ", ".join(f"{n} winners, {_money(total, cur)}" for cur, n, total in sorted(totals)) or "none yet"

    @admin.display(description="Import")
    def import_winners(self, cycle: PayoutCycle) -> str:
        if cycle.pk is None:
            return "-"
        url = reverse("admin:payouts_winnerselection_import")
        return format_html('<a href="{}?cycle={}">Import winners from a CSV file</a>', url, cycle.pk)

    @admin.action(description="Prepare payout batches for the selected cycles")
    def prepare(self, request: HttpRequest, queryset: QuerySet[PayoutCycle]) -> None:
        for cycle in queryset.order_by("pk"):
            batches = self.attempt(request, str(cycle), partial(cycle_prepare, cycle_id=cycle.pk, actor=request.user))
            if batches is not None:
                ready = "; ".join(
                    f"{b.sender_batch_id} {b.status}, {_money(b.total_minor, b.currency)}" for b in batches
                )
                self.message_user(request, f"{cycle}: {len(batches)} batch(es): {ready}.", messages.SUCCESS)


# --- winner selections and their CSV import ------------------------------------------------


@dataclass(frozen=True)
class WinnerRow:
    line: int
    user_id: int
    amount: Money
    recipient_type: str
    recipient: str


@dataclass(frozen=True)
class _ParsedRow:
    line: int
    user_id: str
    username: str
    amount: Money
    recipient_type: str
    recipient: str


REQUIRED_COLUMNS = ("amount", "currency", "recipient_type", "recipient")
USER_COLUMNS = ("user_id", "username")
MAX_CSV_BYTES = 10 * 1024 * 1024
_USER_ID = re.compile(r"[0-9]{1,18}")  # a bigint primary key


def _header_problems(columns: Sequence[str] | None) -> list[str]:
    if not columns:
        return ["line 1: the file is empty; the first line must name the columns"]
    found = set(columns)
    problems = [f"line 1: missing column {name!r}" for name in REQUIRED_COLUMNS if name not in found]
    if not found & set(USER_COLUMNS):
        problems.append("line 1: missing column 'user_id' or 'username'")
    unknown = sorted(found - set(REQUIRED_COLUMNS) - set(USER_COLUMNS))
    problems += [f"line 1: unknown column {name!r}" for name in unknown]
    if len(found) != len(columns):
        problems.append("line 1: a column is named twice")
    return problems


def _field_problems(values: dict[str, str]) -> tuple[Money | None, list[str]]:
    problems: list[str] = []
    if not values.get("user_id") and not values.get("username"):
        problems.append("give a user_id or a username")
    if values.get("user_id") and not _USER_ID.fullmatch(values["user_id"]):
        problems.append(f"user_id {values['user_id']!r} is not a whole number")
    amount = None
    try:
        amount = Money.parse(values["amount"], values["currency"])
        money_in_bounds(amount.minor, amount.currency)  # the one rule for every amount from outside
    except MoneyError as error:
        if amount is None:
            problems.append(str(error))
        elif amount.minor <= 0:
            problems.append(f"amount {values['amount']!r} must be more than zero")
        else:
            problems.append(f"amount {values['amount']!r}: {error}")
    if values["recipient_type"] not in RecipientType.values:
        problems.append(f"recipient_type {values['recipient_type']!r} is not one of {', '.join(RecipientType.values)}")
    if not problems and amount is not None:  # then what prepare itself checks (the recipient's format)
        unsaved = WinnerSelection(
            amount_minor=amount.minor, currency=amount.currency, recipient_type=values["recipient_type"],
            recipient=values["recipient"],
        )  # fmt: skip
        problems += selection_problems(unsaved)
    return amount, problems


def _parse_row(line: int, record: dict[str | None, Any], width: int) -> tuple[_ParsedRow | None, list[str]]:
    extra, missing = len(record.get(None) or ()), sum(value is None for value in record.values())
    if extra or missing:
        return None, [f"line {line}: expected {width} fields, found {width + extra - missing}"]
    values = {name: str(value).strip() for name, value in record.items() if name is not None}
    amount, problems = _field_problems(values)
    if problems or amount is None:
        return None, [f"line {line}: {problem}" for problem in problems]
    return _ParsedRow(
        line, values.get("user_id", ""), values.get("username", ""), amount, values["recipient_type"],
        values["recipient"],
    ), []  # fmt: skip


def _resolve_users(rows: list[_ParsedRow]) -> tuple[dict[int, int], list[str]]:
    """line -> user pk, or a problem naming the line."""
    users = get_user_model().objects
    names_by_id = dict(users.filter(pk__in={int(r.user_id) for r in rows if r.user_id}).values_list("pk", "username"))
    ids_by_name = dict(
        users.filter(username__in={r.username for r in rows if r.username}).values_list("username", "pk")
    )
    found: dict[int, int] = {}
    problems: list[str] = []
    for row in rows:
        if row.user_id and int(row.user_id) not in names_by_id:
            problems.append(f"line {row.line}: no user with user_id {row.user_id}")
        elif row.user_id and row.username and names_by_id[int(row.user_id)] != row.username:
            problems.append(f"line {row.line}: user_id {row.user_id} is not the user {row.username!r}")
        elif not row.user_id and row.username not in ids_by_name:
            problems.append(f"line {row.line}: no user named {row.username!r}")
        else:
            found[row.line] = int(row.user_id) if row.user_id else ids_by_name[row.username]
    return found, problems


def _duplicate_problems(cycle: PayoutCycle, user_by_line: dict[int, int]) -> list[str]:
    already = set(cycle.selections.filter(user_id__in=user_by_line.values()).values_list("user_id", flat=True))
    first_line: dict[int, int] = {}
    problems: list[str] = []
    for line, user_id in sorted(user_by_line.items()):
        if user_id in already:
            problems.append(f"line {line}: user {user_id} is already a winner of this cycle")
        elif user_id in first_line:
            problems.append(f"line {line}: user {user_id} is already on line {first_line[user_id]}")
        first_line.setdefault(user_id, line)
    return problems


def winners_csv_parse(text: str, cycle: PayoutCycle) -> tuple[list[WinnerRow], list[str]]:
    """Every row, or every problem found with its line number (the header is line 1)."""
    reader = csv.DictReader(io.StringIO(text, newline=""), strict=True)
    try:
        problems = _header_problems(reader.fieldnames)
        if problems:
            return [], problems
        parsed: list[_ParsedRow] = []
        for record in reader:
            row, row_problems = _parse_row(reader.line_num, record, len(reader.fieldnames or ()))
            problems += row_problems
            if row is not None:
                parsed.append(row)
    except csv.Error as error:
        return [], [*problems, f"line {reader.line_num}: not valid CSV ({error})"]
    if not parsed and not problems:
        problems.append("the file lists no winners")
    user_by_line, user_problems = _resolve_users(parsed)
    problems = sorted(problems + user_problems + _duplicate_problems(cycle, user_by_line), key=_line_number)
    if problems:
        return [], problems
    return [WinnerRow(r.line, user_by_line[r.line], r.amount, r.recipient_type, r.recipient) for r in parsed], []


def _line_number(problem: str) -> int:
    match = re.match(r"line (\d+):", problem)
    return int(match[1]) if match else 0


class WinnersCsvForm(forms.Form):
    cycle = forms.ModelChoiceField(queryset=PayoutCycle.objects.order_by("-pk"))
    file = forms.FileField(
        label="CSV file",
        help_text="Columns: user_id or username, amount (e.g. 1234.50), currency, recipient_type, recipient.",
    )

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean() or {}
        upload, cycle = cleaned.get("file"), cleaned.get("cycle")
        if upload is None or cycle is None:
            return cleaned
        if upload.size > MAX_CSV_BYTES:
            raise forms.ValidationError(f"The file is larger than {MAX_CSV_BYTES // (1024 * 1024)} MB.")
        try:
            text = upload.read().decode("utf-8-sig")
        except UnicodeDecodeError as error:
            raise forms.ValidationError("The file is not UTF-8 text.") from error
        rows, problems = winners_csv_parse(text, cycle)
        if problems:
            raise forms.ValidationError([*problems, "Nothing was imported; correct these lines and upload again."])
        cleaned["rows"] = rows
        return cleaned


@admin.register(WinnerSelection)
class WinnerSelectionAdmin(ServiceActionsMixin, ReadOnlyAdmin):
    list_display = ("id", "cycle", "user", "amount", "recipient_type", "recipient", "paid_outside", "created_at")
    list_filter = ("cycle", "recipient_type", "currency", "paid_outside")
    list_select_related = ("cycle", "user")
    search_fields = ("user__username", "recipient")
    readonly_fields = ("amount",)
    exclude = ("amount_minor",)

    @admin.display(description="Amount", ordering="amount_minor")
    def amount(self, selection: WinnerSelection) -> str:
        return _money(selection.amount_minor, selection.currency)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm(IMPORT_PERMISSION)

    def add_view(self, request: HttpRequest, form_url: str = "", extra_context: Any = None) -> HttpResponse:
        """Winners arrive only by CSV import: the admin's Add button leads there."""
        return HttpResponseRedirect(reverse("admin:payouts_winnerselection_import"))

    def get_urls(self) -> list[URLPattern]:
        view = self.admin_site.admin_view(self.import_view)
        return [path("import/", view, name="payouts_winnerselection_import"), *super().get_urls()]

    def import_view(self, request: HttpRequest) -> HttpResponse:
        if not self.has_add_permission(request):
            raise DjangoPermissionDenied
        form = WinnersCsvForm(
            request.POST if request.method == "POST" else None,
            request.FILES if request.method == "POST" else None,
            initial={"cycle": request.GET.get("cycle")},
        )
        if form.is_valid():
            cycle, rows = form.cleaned_data["cycle"], form.cleaned_data["rows"]
            count = self.attempt(
                request, str(cycle), partial(winner_selections_import, cycle_id=cycle.pk, rows=rows, actor=request.user)
            )
            if count is not None:
                self.message_user(request, f"{cycle}: imported {count} winner(s).", messages.SUCCESS)
                changelist = reverse("admin:payouts_winnerselection_changelist")
                return HttpResponseRedirect(f"{changelist}?cycle__id__exact={cycle.pk}")
        return self._import_page(request, form)

    def _import_page(self, request: HttpRequest, form: WinnersCsvForm) -> TemplateResponse:
        request.current_app = self.admin_site.name
        context = {
            **self.admin_site.each_context(request),
            "title": "Import winners from CSV",
            "opts": self.opts,
            "form": form,
            "columns": (*USER_COLUMNS, *REQUIRED_COLUMNS),
            "recipient_types": RecipientType.values,
            "changelist_url": reverse("admin:payouts_winnerselection_changelist"),
        }
        return TemplateResponse(request, "admin/payouts/winnerselection/import_csv.html", context)


# --- batches --------------------------------------------------------------------------------


@admin.register(PayoutBatch)
class PayoutBatchAdmin(ServiceActionsMixin, ReadOnlyAdmin):
    list_display = ("sender_batch_id", "cycle", "provider", status_column, "provider_call", "total", "item_count",
                    "progress", "prepared_by", "approved_by", "created_at")  # fmt: skip
    list_filter = ("status", "provider", "currency", "cycle")
    list_select_related = ("cycle", "prepared_by", "approved_by")
    search_fields = ("=sender_batch_id", "=provider_batch_id")
    readonly_fields = ("total", "progress", "provider_call", "items")
    exclude = ("total_minor",)
    actions = ("approve", "execute", "retry_failed", "sync_now")

    def get_changelist_instance(self, request: HttpRequest) -> Any:
        """Progress and provider calls for the whole page in a few queries."""
        changelist = super().get_changelist_instance(request)
        progress = progress_by_batch(batch.pk for batch in changelist.result_list)
        calls = movement_status_by_batch(batch.pk for batch in changelist.result_list)
        for batch in changelist.result_list:
            batch.page_progress = progress.get(batch.pk, [])
            batch.page_provider_call = calls.get(batch.pk, "")
        return changelist

    @admin.display(description="Total", ordering="total_minor")
    def total(self, batch: PayoutBatch) -> str:
        return _money(batch.total_minor, batch.currency)

    @admin.display(description="Progress")
    def progress(self, batch: PayoutBatch) -> str:
        progress = getattr(batch, "page_progress", None)
        if progress is None:
            progress = progress_by_batch([batch.pk]).get(batch.pk, [])
        return progress_text(progress, batch.currency, batch.provider)

    @admin.display(description="Provider call")
    def provider_call(self, batch: PayoutBatch) -> str:
        """The money movement's status (the truth about the send): unknown means it is being found out."""
        call = getattr(batch, "page_provider_call", None)
        if call is None:
            call = movement_status_by_batch([batch.pk]).get(batch.pk, "")
        return label_of("providers.moneymovement", call, provider=batch.provider) if call else "-"

    @admin.display(description="Items")
    def items(self, batch: PayoutBatch) -> SafeString:
        url = reverse("admin:payouts_payoutitem_changelist")
        return format_html('<a href="{}?batch__id__exact={}">{} item(s)</a>', url, batch.pk, batch.item_count)

    def _lines(self, batches: Iterable[PayoutBatch]) -> list[str]:
        return [f"{b.sender_batch_id}: {b.status}, {b.item_count} item(s), {self.total(b)}" for b in batches]

    @admin.action(description="Approve the selected batches")
    def approve(self, request: HttpRequest, queryset: QuerySet[PayoutBatch]) -> TemplateResponse | None:
        batches = list(queryset.order_by("pk"))
        if not action_confirmed(request):
            return self.confirm(request, action="approve", title="Approve payout batches", objects=batches,
                                lines=self._lines(batches))  # fmt: skip
        for batch in batches:
            done = self.attempt(request, batch.sender_batch_id, partial(batch_approve, batch_id=batch.pk,
                                                                        approver=request.user))  # fmt: skip
            if done is not None:
                self.message_user(request, f"{done.sender_batch_id} approved ({self.total(done)}).", messages.SUCCESS)
        return None

    @admin.action(description="Execute: send the selected batches to the provider")
    def execute(self, request: HttpRequest, queryset: QuerySet[PayoutBatch]) -> TemplateResponse | None:
        batches = list(queryset.order_by("pk"))
        if not action_confirmed(request):
            return self.confirm(request, action="execute", title="Send payout batches", objects=batches,
                                lines=self._lines(batches))  # fmt: skip
        for batch in batches:
            sent = self.attempt(request, batch.sender_batch_id, partial(batch_execute, batch_id=batch.pk,
                                                                        actor=request.user))  # fmt: skip
            if sent is not None:
                self._report_sent(request, sent)
        return None

    def _report_sent(self, request: HttpRequest, batch: PayoutBatch) -> None:
        if batch.status == PayoutBatch.Status.SUBMITTING:
            call = self.provider_call(batch)
            text = (
                f"{batch.sender_batch_id}: the provider's answer is not known yet ({call}); it is looked up on "
                "schedule and never sent under another id."
            )
            self.message_user(request, text, messages.WARNING)
        elif batch.status == PayoutBatch.Status.DENIED:
            self.message_user(request, f"{batch.sender_batch_id} denied: {batch.failure_reason}", messages.ERROR)
        else:
            self.message_user(request, f"{batch.sender_batch_id} sent: {batch.status}.", messages.SUCCESS)

    @admin.action(description="Retry the failed items of the selected batches")
    def retry_failed(self, request: HttpRequest, queryset: QuerySet[PayoutBatch]) -> None:
        for batch in queryset.order_by("pk"):
            retries = self.attempt(request, batch.sender_batch_id, partial(batch_retry_failed, batch_id=batch.pk,
                                                                           actor=request.user))  # fmt: skip
            for retry in retries or []:
                text = (
                    f"{batch.sender_batch_id}: retry batch {retry.sender_batch_id} {retry.status}, {self.total(retry)}."
                )
                self.message_user(request, text, messages.SUCCESS)

    @admin.action(description="Sync now: look up open provider calls and the items of the selected batches")
    def sync_now(self, request: HttpRequest, queryset: QuerySet[PayoutBatch]) -> None:
        for batch in queryset.order_by("pk"):
            synced = self.attempt(
                request, batch.sender_batch_id, partial(batch_movements_sync, batch_id=batch.pk, actor=request.user)
            )
            if synced is not None:
                found = progress_by_batch([synced.pk]).get(synced.pk, [])
                progress = progress_text(found, synced.currency, synced.provider)
                self.message_user(request, f"{synced.sender_batch_id}: {synced.status}; {progress}.", messages.SUCCESS)


# --- items ----------------------------------------------------------------------------------


@admin.register(PayoutItem)
class PayoutItemAdmin(CsvExportMixin, ServiceActionsMixin, LargeTableAdminMixin, ReadOnlyAdmin):
    resource_classes = (PayoutItemResource,)
    list_display = ("sender_item_id", "batch", "recipient_type", "receiver", "amount", status_column, help_column,
                    "provider_item_id", "updated_at")  # fmt: skip
    list_filter = ("status", "batch", "recipient_type")
    list_select_related = ("batch",)
    # Identifiers exactly, the receiver in any case: each has an index (payouts/0005); a substring scans every row.
    search_fields = ("sender_item_id__exact", "=receiver", "provider_item_id__exact")
    readonly_fields = ("amount",)
    exclude = ("amount_minor",)
    actions = ("cancel_unclaimed",)

    @admin.display(description="Amount", ordering="amount_minor")
    def amount(self, item: PayoutItem) -> str:
        return _money(item.amount_minor, item.currency)

    @admin.action(description="Cancel the selected unclaimed payouts (the money comes back)")
    def cancel_unclaimed(self, request: HttpRequest, queryset: QuerySet[PayoutItem]) -> TemplateResponse | None:
        items = list(queryset.order_by("pk"))
        if not action_confirmed(request):
            lines = [f"{i.sender_item_id} to {i.receiver}: {i.status}, {self.amount(i)}" for i in items]
            return self.confirm(request, action="cancel_unclaimed", title="Cancel unclaimed payouts", objects=items,
                                lines=lines)  # fmt: skip
        for item in items:
            done = self.attempt(request, item.sender_item_id, partial(item_cancel_unclaimed, item_id=item.pk,
                                                                      actor=request.user))  # fmt: skip
            if done is not None:
                level = messages.SUCCESS if done.status == PayoutItem.Status.RETURNED else messages.WARNING
                self.message_user(request, f"{done.sender_item_id}: {done.status}.", level)
        return None
