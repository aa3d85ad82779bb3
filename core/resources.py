"""CSV export resource of the audit log changelist (core.exports)."""

from __future__ import annotations

from core.exports import ExportResource
from core.models import AuditLog


class AuditLogResource(ExportResource):
    class Meta:
        model = AuditLog
        fields = (
            "id", "created_at", "actor", "actor_repr", "action", "object_type", "object_id", "object_repr", "ip",
            "user_agent", "request_id", "before", "after",
        )  # fmt: skip
        export_order = fields
