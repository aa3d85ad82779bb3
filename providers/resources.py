"""CSV export resources of the payments changelists (core.exports): amounts in minor units plus currency."""

from __future__ import annotations

from core.exports import ExportResource, column, major_units, minor_units
from providers.models import Payment, Refund


class PaymentResource(ExportResource):
    amount_minor = minor_units("amount_minor")
    amount = major_units("amount_minor", "currency", "amount")
    fee_minor = minor_units("fee_minor")
    platform_fee_minor = minor_units("platform_fee_minor")
    refunded_minor = minor_units("refunded_minor")

    class Meta:
        model = Payment
        fields = (
            "id", "reference", "created_at", "updated_at", "status", "provider", "method", "currency",
            "amount_minor", "amount", "fee_minor", "platform_fee_minor", "refunded_minor", "provider_reference",
            "failure_reason", "user",
        )  # fmt: skip
        export_order = fields


class RefundResource(ExportResource):
    related = ("payment",)
    payment_reference = column("payment__reference", "payment_reference")
    provider = column("payment__provider", "provider")
    currency = column("payment__currency", "currency")
    amount_minor = minor_units("amount_minor")
    amount = major_units("amount_minor", "payment__currency", "amount")

    class Meta:
        model = Refund
        fields = (
            "id", "payment_reference", "created_at", "updated_at", "status", "provider", "currency", "amount_minor",
            "amount", "reason", "failure_reason", "provider_reference",
        )  # fmt: skip
        export_order = fields
