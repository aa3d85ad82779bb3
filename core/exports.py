"""CSV export of admin changelists with django-import-export: export only, never import.

`CsvExportMixin`, placed first among a ModelAdmin's bases with `resource_classes = (SomeResource,)`, adds an
Export link to the changelist. The file holds exactly the rows the changelist selects with its current filters,
search and date drill-down (all pages, in its order); it is for active staff holding the model's view
permission (others get 403) and each export writes an audit row (who, which model, how many rows, which filters).
A file is built in memory, so a selection of more than ADMIN_EXPORT_MAX_ROWS rows is refused with a message
asking for narrower filters (counted with a bounded query, never a full-table count).

`ExportResource` is the base of every resource (one `resources.py` per app): amounts are exported as integer
minor units beside their currency (`minor_units`), with the same amount in major units as a plain decimal
string (`major_units`), never a float; a text cell that a spreadsheet would run as a formula (=, +, -, @ ...)
is prefixed with an apostrophe.
"""

from __future__ import annotations

import re
from typing import Any

from django.conf import settings
from django.contrib import messages
from django.contrib.auth import get_permission_codename
from django.db.models import Model, QuerySet
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.urls import reverse
from import_export import resources, widgets
from import_export.admin import ExportMixin
from import_export.fields import Field
from import_export.formats.base_formats import CSV

from core.money import Money, MoneyError
from core.services import audit_record

_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
_PLAIN_NUMBER = re.compile(r"^-?[0-9]+(\.[0-9]+)?$")


def _follow(instance: Any, path: str) -> Any:
    for name in path.split("__"):
        instance = getattr(instance, name, None) if instance is not None else None
    return instance


def column(attribute: str, column_name: str) -> Field:
    """A value read through a relation, e.g. column("payment__reference", "payment_reference")."""
    return Field(attribute=attribute, column_name=column_name, readonly=True)


def minor_units(attribute: str, column_name: str | None = None) -> Field:
    """An integer amount in minor units, written as digits (never localised, never a float)."""
    return Field(
        attribute=attribute,
        column_name=column_name or attribute.rsplit("__", 1)[-1],
        widget=widgets.IntegerWidget(coerce_to_string=False),
        readonly=True,
    )


def major_units(amount: str, currency: str, column_name: str) -> Field:
    """The same amount in major units of its currency as a decimal string ("1234.50", "1200" for JPY)."""

    def render(instance: Any) -> str:
        minor, code = _follow(instance, amount), _follow(instance, currency)
        if minor is None or not code:
            return ""
        try:
            return Money(int(minor), code).decimal_string()
        except MoneyError:  # a currency we no longer know: the minor units column still has it
            return ""

    return Field(column_name=column_name, dehydrate_method=render, readonly=True)


class ExportResource(resources.ModelResource):
    """Base resource: formula-safe text cells; `related` are joined in the export query (no query per row)."""

    related: tuple[str, ...] = ()

    def filter_export(self, queryset: QuerySet, **kwargs: Any) -> QuerySet:
        return queryset.select_related(*self.related) if self.related else queryset

    def export_field(self, field: Field, instance: Model, **kwargs: Any) -> Any:
        value = super().export_field(field, instance, **kwargs)
        if isinstance(value, str) and value.startswith(_FORMULA_START) and not _PLAIN_NUMBER.match(value):
            return "'" + value
        return value


class CsvExportMixin(ExportMixin):
    """Export the changelist as CSV (see the module docstring)."""

    export_formats = [CSV]
    skip_export_form = True  # one click: the file of what the changelist shows

    def has_export_permission(self, request: HttpRequest) -> bool:
        user = request.user
        codename = get_permission_codename("view", self.opts)
        return bool(user.is_active and user.is_staff and user.has_perm(f"{self.opts.app_label}.{codename}"))

    def export_action(self, request: HttpRequest) -> HttpResponse:
        if self.has_export_permission(request):
            limit = settings.ADMIN_EXPORT_MAX_ROWS
            if self.get_export_queryset(request)[: limit + 1].count() > limit:
                messages.error(request, f"More than {limit:,} rows selected: narrow the filters, then export again.")
                changelist = reverse(f"admin:{self.opts.app_label}_{self.opts.model_name}_changelist")
                return HttpResponseRedirect(f"{changelist}?{request.GET.urlencode()}")
        return super().export_action(request)

    def get_data_for_export(self, request: HttpRequest, queryset: QuerySet, **kwargs: Any) -> Any:
        dataset = super().get_data_for_export(request, queryset, **kwargs)
        audit_record(
            actor=request.user,
            action="admin.export_csv",
            after={"model": self.opts.label_lower, "rows": len(dataset), "filters": request.GET.urlencode()[:1000]},
        )
        return dataset
