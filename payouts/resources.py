"""CSV export resources of the payout changelists (core.exports): amounts in minor units plus currency."""

from __future__ import annotations

from core.exports import ExportResource, column, major_units, minor_units
from payouts.models import PayoutItem


class PayoutItemResource(ExportResource):
    related = ("batch",)
    sender_batch_id = column("batch__sender_batch_id", "sender_batch_id")
    provider = column("batch__provider", "provider")
    amount_minor = minor_units("amount_minor")
    amount = major_units("amount_minor", "currency", "amount")

    class Meta:
        model = PayoutItem
        fields = (
            "id", "sender_batch_id", "sender_item_id", "provider", "created_at", "updated_at", "status",
            "recipient_type", "receiver", "currency", "amount_minor", "amount", "provider_item_id", "error",
        )  # fmt: skip
        export_order = fields
