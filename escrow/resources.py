"""CSV export resources of the escrow and purchase changelists (core.exports): amounts in minor units plus
currency."""

from __future__ import annotations

from core.exports import ExportResource, column, major_units, minor_units
from escrow.models import EscrowDeal, Purchase, PurchaseRefund


class EscrowDealResource(ExportResource):
    related = ("seller_account",)
    seller_account = column("seller_account__stripe_account_id", "seller_account")
    amount_minor = minor_units("amount_minor")
    amount = major_units("amount_minor", "currency", "amount")
    commission_minor = minor_units("commission_minor")
    commission = major_units("commission_minor", "currency", "commission")
    reversed_minor = minor_units("reversed_minor")

    class Meta:
        model = EscrowDeal
        fields = (
            "id", "created_at", "updated_at", "status", "buyer", "seller_account", "currency", "amount_minor",
            "amount", "commission_bps", "commission_minor", "commission", "reversed_minor", "hold_mode",
            "timeout_policy", "deadline", "payment_intent_id", "transfer_id", "failure_reason", "captured_at",
            "released_at", "transferred_at", "refunded_at",
        )  # fmt: skip
        export_order = fields


class PurchaseResource(ExportResource):
    related = ("service",)
    service = column("service__code", "service")
    amount_minor = minor_units("amount_minor")
    amount = major_units("amount_minor", "currency", "amount")
    captured_minor = minor_units("captured_minor")
    refunded_minor = minor_units("refunded_minor")
    refund_reserved_minor = minor_units("refund_reserved_minor")

    class Meta:
        model = Purchase
        fields = (
            "id", "created_at", "updated_at", "buyer", "service", "status", "outcome", "outcome_at", "provider",
            "currency", "amount_minor", "amount", "captured_minor", "refunded_minor", "refund_reserved_minor",
            "payment_intent_id", "failure_reason",
        )  # fmt: skip
        export_order = fields


class PurchaseRefundResource(ExportResource):
    related = ("purchase",)
    currency = column("purchase__currency", "currency")
    amount_minor = minor_units("amount_minor")
    amount = major_units("amount_minor", "purchase__currency", "amount")

    class Meta:
        model = PurchaseRefund
        fields = (
            "id", "purchase", "created_at", "updated_at", "status", "currency", "amount_minor", "amount", "reason",
            "failure_reason", "provider_reference", "requested_by",
        )  # fmt: skip
        export_order = fields
