from collections.abc import Sequence
from datetime import timedelta
from typing import Any, ClassVar

from django import forms
from django.conf import settings
from django.contrib import admin, messages
from django.contrib.admin import helpers
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils import timezone
from django.utils.cache import add_never_cache_headers
from rest_framework.authtoken.models import TokenProxy

from core.alerts import alert_close
from core.errors import AppError
from core.exports import CsvExportMixin
from core.locks import lock_release_by_staff
from core.models import Alert, ApiToken, AuditLog, ProcessingLock
from core.money import MoneyError, money_in_bounds, validate_currency
from core.resources import AuditLogResource
from core.tokens import api_token_issue, api_token_revoke, api_token_state

MOVES_MONEY = "This moves money or signs it off, and is recorded in the audit log under your name."


def action_page(
    model_admin: admin.ModelAdmin,
    request: HttpRequest,
    *,
    title: str,
    action: str = "",
    objects: Sequence[Any] = (),
    lines: Sequence[str] = (),
    form: forms.Form | None = None,
    explanation: str = MOVES_MONEY,
) -> TemplateResponse:
    """The intermediate page of an admin action (a confirmation, or a form it needs); submitting it posts the
    action again with post=yes. Actions that move money show it before anything moves."""
    request.current_app = model_admin.admin_site.name
    opts = model_admin.opts
    context = {
        **model_admin.admin_site.each_context(request),
        "title": title,
        "opts": opts,
        "lines": lines,
        "objects": objects,
        "form": form,
        "action": action,
        "explanation": explanation,
        "action_checkbox_name": helpers.ACTION_CHECKBOX_NAME,
        "changelist_url": reverse(f"admin:{opts.app_label}_{opts.model_name}_changelist"),
    }
    return TemplateResponse(request, "admin/action_page.html", context)


def action_confirmed(request: HttpRequest) -> bool:
    """True on the confirmation page's submit (post=yes), false on the first click of the action."""
    return request.POST.get("post") == "yes"


class AmountsInBoundsForm(forms.ModelForm):
    """An admin form whose amounts are held to the one rule of core.money (money_in_bounds): integer minor units
    above zero (or zero, with `zero_allowed`) and at most the configured maximum of their currency, so no
    configuration can carry an amount no movement may have, nor reach a database integer range error.

    `amount_fields` maps each amount field to the field holding its currency; an empty amount is left to the
    model (a nullable cap). Each problem is a form error on its field."""

    amount_fields: ClassVar[dict[str, str]] = {}
    zero_allowed: ClassVar[bool] = False

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean() or {}
        for amount_field, currency_field in self.amount_fields.items():
            if currency_field not in self.fields:  # shown read-only: the row's own
                currency = getattr(self.instance, currency_field, None)
            elif currency_field not in cleaned:  # refused already, with its own error
                continue
            else:
                currency = cleaned[currency_field]
                try:
                    validate_currency(currency)
                except MoneyError as error:
                    self.add_error(currency_field, str(error))
                    continue
            minor = cleaned.get(amount_field)
            if amount_field not in self.fields or minor is None:
                continue
            try:
                money_in_bounds(minor, currency, allow_zero=self.zero_allowed)
            except MoneyError as error:
                self.add_error(amount_field, str(error))
        return cleaned


class ReadOnlyInline(admin.TabularInline):
    """Child rows that only services write, listed read-only on their parent's page (every field shown)."""

    extra = 0
    max_num = 0
    can_delete = False

    def get_readonly_fields(self, request: HttpRequest, obj: object = None) -> Sequence[str]:
        return tuple(self.fields or ())

    def has_add_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False


class ReadOnlyAdmin(admin.ModelAdmin):
    """Rows that only services write: visible, never edited or deleted here."""

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False


@admin.register(AuditLog)
class AuditLogAdmin(CsvExportMixin, ReadOnlyAdmin):
    resource_classes = (AuditLogResource,)
    list_display = ("created_at", "actor_repr", "action", "object_type", "object_id", "ip", "request_id")
    list_filter = ("action", "object_type")
    search_fields = ("actor_repr", "object_id", "request_id", "action")
    date_hierarchy = "created_at"
    show_full_result_count = False


@admin.register(ProcessingLock)
class ProcessingLockAdmin(ReadOnlyAdmin):
    list_display = ("key", "holder", "reason", "acquired_at", "expires_at")
    search_fields = ("key", "holder")
    actions = ("release",)

    def has_release_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm("core.release_processinglock")

    @admin.action(description="Release selected locks", permissions=["release"])
    def release(self, request: HttpRequest, queryset: QuerySet[ProcessingLock]) -> None:
        for lock in queryset:
            try:
                lock_release_by_staff(lock_pk=lock.pk, actor=request.user)
            except AppError as error:
                self.message_user(request, f"{lock.key}: {error.user_message} {error.action_required}", messages.ERROR)
                continue
            self.message_user(request, f"Released {lock.key} (was held by {lock.holder}).", messages.SUCCESS)


@admin.register(Alert)
class AlertAdmin(ReadOnlyAdmin):
    list_display = ("last_raised_at", "severity", "status", "title", "occurrences", "action_required")
    list_filter = ("status", "severity")
    search_fields = ("key", "title")
    actions = ("acknowledge", "resolve")

    def has_close_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm("core.acknowledge_alert")

    def _close(self, request: HttpRequest, queryset: QuerySet[Alert], status: str) -> None:
        for alert in queryset:
            try:
                alert_close(alert_pk=alert.pk, actor=request.user, status=status)
            except AppError as error:
                text = f"{alert.title}: {error.user_message} {error.action_required}"
                self.message_user(request, text, messages.ERROR)
                continue
            self.message_user(request, f"{alert.title}: {status}.", messages.SUCCESS)

    @admin.action(description="Acknowledge selected alerts", permissions=["close"])
    def acknowledge(self, request: HttpRequest, queryset: QuerySet[Alert]) -> None:
        self._close(request, queryset, Alert.Status.ACKNOWLEDGED)

    @admin.action(description="Resolve selected alerts", permissions=["close"])
    def resolve(self, request: HttpRequest, queryset: QuerySet[Alert]) -> None:
        self._close(request, queryset, Alert.Status.RESOLVED)


# DRF's own token admin stored and showed keys in clear and wrote no audit row: client tokens are ApiTokens.
if admin.site.is_registered(TokenProxy):
    admin.site.unregister(TokenProxy)


class ApiTokenForm(forms.ModelForm):
    class Meta:
        model = ApiToken
        fields = ("user", "name", "expires_at")


@admin.register(ApiToken)
class ApiTokenAdmin(admin.ModelAdmin):
    """Issue (the key is shown once), list and revoke client API tokens; both are audited (core.tokens)."""

    form = ApiTokenForm
    list_display = ("name", "user", "key_prefix", "state", "created_at", "expires_at", "last_used_at", "revoked_at")
    list_filter = ("revoked_at",)
    search_fields = ("name", "user__username", "key_prefix")
    raw_id_fields = ("user",)
    readonly_fields = ("key_prefix", "created_at", "created_by", "last_used_at", "revoked_at", "revoked_by")
    actions = ("revoke",)

    def get_fields(self, request: HttpRequest, obj: ApiToken | None = None) -> Sequence[str]:
        return ApiTokenForm.Meta.fields if obj is None else ("user", "name", "expires_at", *self.readonly_fields)

    @admin.display(description="state")
    def state(self, obj: ApiToken) -> str:
        return api_token_state(obj)

    def get_changeform_initial_data(self, request: HttpRequest) -> dict[str, Any]:
        days = settings.API_TOKEN_DEFAULT_DAYS
        return {"expires_at": timezone.now() + timedelta(days=days)} if days else {}

    def has_change_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False  # a token is issued or revoked, never edited

    def has_delete_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False  # revoked tokens stay listed, with who revoked them

    def has_revoke_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm("core.revoke_apitoken")

    def save_model(self, request: HttpRequest, obj: ApiToken, form: forms.Form, change: bool) -> None:
        issued = api_token_issue(user=obj.user, name=obj.name, expires_at=obj.expires_at, actor=request.user)
        obj.pk, obj.key_prefix, obj.created_at = issued.token.pk, issued.token.key_prefix, issued.token.created_at
        request.issued_api_token_key = issued.key  # type: ignore[attr-defined]  # for response_add, never stored

    def response_add(self, request: HttpRequest, obj: ApiToken, post_url_continue: str | None = None) -> HttpResponse:
        """The one page that shows the key: rendered here, not after a redirect, and never cached."""
        request.current_app = self.admin_site.name
        context = {
            **self.admin_site.each_context(request),
            "title": "API token issued",
            "opts": self.opts,
            "token": obj,
            "key": request.issued_api_token_key,  # type: ignore[attr-defined]
        }
        response = TemplateResponse(request, "admin/core/apitoken/issued.html", context)
        add_never_cache_headers(response)
        response["Cache-Control"] = "no-store"
        return response

    @admin.action(description="Revoke selected API tokens", permissions=["revoke"])
    def revoke(self, request: HttpRequest, queryset: QuerySet[ApiToken]) -> None:
        for token in queryset:
            _, changed = api_token_revoke(token_pk=token.pk, actor=request.user)
            if changed:
                self.message_user(request, f"Revoked {token}: it is refused from now on.", messages.SUCCESS)
            else:
                self.message_user(request, f"{token} was revoked already.", messages.WARNING)
