"""CSV export resources of the reconciliation changelists (core.exports): amounts in minor units plus currency."""

from __future__ import annotations

from core.exports import ExportResource, column, minor_units
from monitoring.models import ReconciliationIssue


class ReconciliationIssueResource(ExportResource):
    related = ("assignee",)
    assignee = column("assignee__username", "assignee")
    ledger_amount_minor = minor_units("ledger_amount_minor")
    provider_amount_minor = minor_units("provider_amount_minor")
    provider_gross_minor = minor_units("provider_gross_minor")
    provider_fee_minor = minor_units("provider_fee_minor")
    record_amount_minor = minor_units("record_amount_minor")

    class Meta:
        model = ReconciliationIssue
        fields = (
            "id", "date", "kind", "provider", "provider_reference", "currency", "ledger_amount_minor",
            "provider_amount_minor", "provider_gross_minor", "provider_fee_minor", "record_amount_minor",
            "record_status", "status", "assignee", "resolution_note", "resolved_at", "created_at", "updated_at",
            "detail",
        )  # fmt: skip
        export_order = fields
