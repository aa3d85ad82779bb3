"""The finance roles of DESIGN.md section 9, as Django groups kept in step after every migrate.

Permissions are named as strings ("app_label.codename"), so core depends on no app:
a permission that does not exist (an app not installed) is skipped.
Services check the same permissions themselves; the groups only hand them out.
"""

from __future__ import annotations

from typing import Any

from django.contrib.auth.models import Group, Permission

VIEW = [
    "core.view_auditlog", "core.view_processinglock",
    "ledger.view_account", "ledger.view_transaction", "ledger.view_entry", "ledger.view_hold",
    "providers.view_webhookevent", "providers.view_payment", "providers.view_refund", "providers.view_routingdecision",
    "providers.view_paymentmethod", "providers.view_feerule", "providers.view_moneymovement",
    "payouts.view_payoutcycle", "payouts.view_winnerselection", "payouts.view_payoutbatch", "payouts.view_payoutitem",
    "core.view_alert", "escrow.view_spendlimit", "escrow.view_spendcounter", "escrow.view_spendreservation",
    "escrow.view_escrowdeal", "escrow.view_selleraccount", "escrow.view_commissiontier",
    "monitoring.view_reconciliationrun", "monitoring.view_reconciliationissue",
    "escrow.view_purchase", "escrow.view_purchaserefund", "escrow.view_purchasableservice", "escrow.view_serviceprice",
    "analytics.view_dailystatussummary", "analytics.view_dailyfailurereason",
]  # fmt: skip

ROLES: dict[str, list[str]] = {
    "Finance viewer": VIEW,
    "Finance operator": [
        *VIEW,
        "payouts.prepare_payoutbatch",
        "payouts.execute_payoutbatch",
        "payouts.add_winnerselection",
        "payouts.add_payoutcycle",
        "payouts.change_payoutcycle",
        "providers.reprocess_webhookevent",
        "providers.sync_moneymovement",
        "core.release_processinglock",
        "monitoring.run_reconciliation",
        "monitoring.resolve_reconciliationissue",
        "escrow.release_escrowdeal",
        "escrow.refund_escrowdeal",
        "escrow.retry_transfer_escrowdeal",
        "escrow.sync_purchase",
    ],
    "Finance approver": [
        *VIEW,
        "payouts.approve_payoutbatch",
        "payouts.fund_payoutcycle",
        "ledger.reverse_transaction",
        "providers.add_refund",
        "providers.reset_circuit_breaker",
        "providers.change_feerule",
        "providers.add_feerule",
        "providers.change_paymentmethod",
        "escrow.add_spendlimit",
        "escrow.change_spendlimit",
        "core.acknowledge_alert",
        "escrow.approve_escrowdeal",
        "escrow.add_selleraccount",
        "escrow.change_selleraccount",
        "escrow.add_commissiontier",
        "escrow.change_commissiontier",
        "escrow.refund_purchase",
        "escrow.add_purchasableservice",
        "escrow.change_purchasableservice",
        "escrow.add_serviceprice",
        "escrow.change_serviceprice",
    ],
    # Not staff: the accounts our service back ends use to report delivery of purchased services.
    "Service delivery": ["escrow.deliver_purchase"],
}


def roles_sync(**_: Any) -> None:
    """Create the groups and give each exactly its permissions (idempotent)."""
    for name, wanted in ROLES.items():
        group, _ = Group.objects.get_or_create(name=name)
        perms = [
            perm
            for label in wanted
            for perm in Permission.objects.filter(
                content_type__app_label=label.split(".")[0], codename=label.split(".")[1]
            )
        ]
        group.permissions.set(perms)
