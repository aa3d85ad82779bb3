"""Reconciliation in the admin: runs (read-only summaries; "Add" runs a day) and the issues staff work through.

Every change is an action calling a monitoring.reconciliation service with request.user, reporting the
result or the AppError's user_message and action_required; the services check the permissions themselves.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from django import forms
from django.contrib import admin, messages
from django.contrib.auth import get_user_model
from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.urls import reverse
from django.utils import timezone
from django.utils.html import format_html_join

from core.admin import ReadOnlyAdmin, action_confirmed, action_page
from core.errors import AppError
from core.exports import CsvExportMixin
from core.money import Money
from monitoring.models import ReconciliationIssue, ReconciliationRun
from monitoring.reconciliation import (
    PROVIDER_SOURCES,
    RESOLVE_PERMISSION,
    RUN_PERMISSION,
    issue_assign,
    issue_reopen,
    issue_resolve,
    reconciliation_run,
)
from monitoring.resources import ReconciliationIssueResource


def _money(minor: int | None, currency: str) -> str:
    return "" if minor is None else Money(minor, currency).format()


def _error(label: str, error: AppError) -> str:
    return f"{label}: {error.user_message} {error.action_required}"


# --- runs -------------------------------------------------------------------------------------


class RunForm(forms.Form):
    date = forms.DateField(help_text="The UTC day to compare, YYYY-MM-DD.")
    provider = forms.ChoiceField(choices=[(p, p) for p in sorted(PROVIDER_SOURCES)])


@admin.register(ReconciliationRun)
class ReconciliationRunAdmin(ReadOnlyAdmin):
    list_display = ("date", "provider", "status", "matched_count", "issue_count", "new_issue_count",
                    "fixed_issue_count", "ledger_rows", "provider_rows", "record_rows", "trigger", "started_at",
                    "seconds")  # fmt: skip
    list_filter = ("status", "provider", "trigger")
    date_hierarchy = "date"
    readonly_fields = ("date", "provider", "status", "trigger", "triggered_by", "started_at", "finished_at",
                       "ledger_rows", "provider_rows", "record_rows", "matched_count", "issue_count",
                       "new_issue_count", "fixed_issue_count", "totals", "error")  # fmt: skip
    exclude = ("summary",)

    @admin.display(description="seconds")
    def seconds(self, run: ReconciliationRun) -> str:
        return f"{(run.finished_at - run.started_at).total_seconds():.1f}" if run.finished_at else "-"

    @admin.display(description="issues by kind (ledger / provider / records)")
    def totals(self, run: ReconciliationRun) -> str:
        rows = [
            (kind, totals["count"], _money(totals["ledger_minor"], currency),
             _money(totals["provider_minor"], currency), _money(totals["record_minor"], currency))
            for kind, by_currency in sorted(run.summary.get("by_kind", {}).items())
            for currency, totals in sorted(by_currency.items())
        ]  # fmt: skip
        return format_html_join("\n", "<div>{}: {} &middot; {} / {} / {}</div>", rows) or "-"

    # "Add" is "run a day": the form calls the service, which checks the permission.
    def has_add_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm(RUN_PERMISSION)

    def add_view(self, request: HttpRequest, form_url: str = "", extra_context: Any = None) -> HttpResponse:
        if not self.has_add_permission(request):
            raise DjangoPermissionDenied
        yesterday = timezone.now().date() - timedelta(days=1)
        form = RunForm(request.POST or None, initial={"date": yesterday, "provider": "stripe"})
        if request.method == "POST" and form.is_valid():
            try:
                run = reconciliation_run(day=form.cleaned_data["date"], provider=form.cleaned_data["provider"],
                                         trigger=ReconciliationRun.Trigger.ADMIN, actor=request.user)  # fmt: skip
            except AppError as error:
                self.message_user(request, _error("Reconciliation not run", error), messages.ERROR)
            else:
                self.message_user(
                    request,
                    f"Reconciled {run.provider} {run.date}: {run.matched_count} matched, {run.issue_count} "
                    f"mismatch(es), {run.new_issue_count} new, {run.fixed_issue_count} fixed since the last run.",
                    messages.WARNING if run.issue_count else messages.SUCCESS,
                )
                return HttpResponseRedirect(reverse("admin:monitoring_reconciliationissue_changelist")
                                            + f"?last_seen_run__id__exact={run.pk}")  # fmt: skip
        return action_page(self, request, title="Run reconciliation for a day", form=form,
                          explanation="Compares the ledger, the provider's report and our records for the day. "
                          "Running a day again reports nothing twice.")  # fmt: skip


# --- issues -------------------------------------------------------------------------------------


class NoteForm(forms.Form):
    note = forms.CharField(widget=forms.Textarea(attrs={"rows": 4, "cols": 80}), required=True)


class ReopenForm(forms.Form):
    note = forms.CharField(widget=forms.Textarea(attrs={"rows": 3, "cols": 80}), required=False)


class AssignForm(forms.Form):
    assignee = forms.ModelChoiceField(queryset=get_user_model().objects.filter(is_active=True, is_staff=True))


class AssigneeFilter(admin.SimpleListFilter):
    title, parameter_name = "assignee", "assigned"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        staff = get_user_model().objects.filter(is_staff=True, is_active=True).order_by("username")[:50]
        return [("me", "Me"), ("none", "Nobody"), *[(str(u.pk), u.get_username()) for u in staff]]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
        if self.value() == "me":
            return queryset.filter(assignee=request.user)
        if self.value() == "none":
            return queryset.filter(assignee__isnull=True)
        return queryset.filter(assignee_id=self.value()) if self.value() else queryset


@admin.register(ReconciliationIssue)
class ReconciliationIssueAdmin(CsvExportMixin, ReadOnlyAdmin):
    resource_classes = (ReconciliationIssueResource,)
    list_display = ("date", "kind", "provider", "provider_reference", "currency", "ledger", "at_provider",
                    "in_records", "record_status", "status", "assignee")  # fmt: skip
    list_filter = ("status", "kind", "provider", AssigneeFilter, "date")
    search_fields = ("=provider_reference",)
    list_select_related = ("assignee",)
    readonly_fields = ("date", "kind", "provider", "provider_reference", "currency", "ledger", "at_provider",
                       "provider_gross_minor", "provider_fee_minor", "in_records", "record_status",
                       "ledger_postings", "provider_rows", "record_rows", "detail", "status", "assignee",
                       "resolution_note", "resolved_by", "resolved_at", "run", "last_seen_run", "created_at",
                       "updated_at")  # fmt: skip
    fields = readonly_fields
    actions = ("assign_to_me", "assign_to", "resolve", "reopen")

    @admin.display(description="ledger (net)")
    def ledger(self, issue: ReconciliationIssue) -> str:
        return _money(issue.ledger_amount_minor, issue.currency)

    @admin.display(description="provider (net)")
    def at_provider(self, issue: ReconciliationIssue) -> str:
        return _money(issue.provider_amount_minor, issue.currency)

    @admin.display(description="our records")
    def in_records(self, issue: ReconciliationIssue) -> str:
        return _money(issue.record_amount_minor, issue.currency)

    def has_resolve_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm(RESOLVE_PERMISSION)

    def _each(self, request: HttpRequest, queryset: QuerySet[ReconciliationIssue], done: str, call: Any) -> None:
        ok = 0
        for issue in queryset:
            try:
                call(issue)
            except AppError as error:
                self.message_user(request, _error(str(issue), error), messages.ERROR)
            else:
                ok += 1
        if ok:
            self.message_user(request, f"{done}: {ok} issue(s).", messages.SUCCESS)

    @admin.action(description="Assign to me", permissions=["resolve"])
    def assign_to_me(self, request: HttpRequest, queryset: QuerySet[ReconciliationIssue]) -> None:
        self._each(request, queryset, "Assigned to you",
                   lambda i: issue_assign(issue_id=i.pk, actor=request.user, assignee_id=request.user.pk))  # fmt: skip

    @admin.action(description="Assign to another staff user…", permissions=["resolve"])
    def assign_to(self, request: HttpRequest, queryset: QuerySet[ReconciliationIssue]) -> HttpResponse | None:
        form = AssignForm(request.POST if action_confirmed(request) else None)
        if form.is_valid():
            assignee = form.cleaned_data["assignee"]
            self._each(request, queryset, f"Assigned to {assignee.get_username()}",
                       lambda i: issue_assign(issue_id=i.pk, actor=request.user, assignee_id=assignee.pk))  # fmt: skip
            return None
        return self._page(request, queryset, "assign_to", "Assign issues", form)

    @admin.action(description="Resolve with a note…", permissions=["resolve"])
    def resolve(self, request: HttpRequest, queryset: QuerySet[ReconciliationIssue]) -> HttpResponse | None:
        form = NoteForm(request.POST if action_confirmed(request) else None)
        if form.is_valid():
            note = form.cleaned_data["note"]
            self._each(request, queryset, "Resolved",
                       lambda i: issue_resolve(issue_id=i.pk, actor=request.user, note=note))  # fmt: skip
            return None
        return self._page(request, queryset, "resolve", "Resolve issues", form)

    @admin.action(description="Reopen…", permissions=["resolve"])
    def reopen(self, request: HttpRequest, queryset: QuerySet[ReconciliationIssue]) -> HttpResponse | None:
        form = ReopenForm(request.POST if action_confirmed(request) else None)
        if form.is_valid():
            note = form.cleaned_data["note"]
            self._each(request, queryset, "Reopened",
                       lambda i: issue_reopen(issue_id=i.pk, actor=request.user, note=note))  # fmt: skip
            return None
        return self._page(request, queryset, "reopen", "Reopen issues", form)

    def _page(
        self, request: HttpRequest, queryset: QuerySet[ReconciliationIssue], action: str, title: str, form: forms.Form
    ) -> HttpResponse:
        issues = list(queryset[:200])
        lines = [f"{i} — {i.get_status_display()}: {i.detail}" for i in issues]
        return action_page(self, request, title=title, form=form, objects=issues, action=action, lines=lines,
                          explanation="Recorded in the audit log under your name.")  # fmt: skip
