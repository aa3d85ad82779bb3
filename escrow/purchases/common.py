"""What every purchase step shares: statuses, permissions, operation names, row access, ledger accounts, alerts."""

from __future__ import annotations

from collections.abc import Iterable

from django.db.models import Q, QuerySet

from core.alerts import alert_raise
from core.errors import NotFound
from core.models import Alert
from escrow.models import Purchase, PurchaseRefund
from providers.accounts import chart_accounts
from providers.models import MoneyMovement
from providers.protocol import movement_run

S = Purchase.Status
O = Purchase.Outcome  # noqa: E741

DELIVER_PERMISSION = "escrow.deliver_purchase"
REFUND_PERMISSION = "escrow.refund_purchase"
SYNC_PERMISSION = "escrow.sync_purchase"

# The protocol operations (providers.protocol), registered by escrow.apps with escrow.purchases.operations.
AUTHORIZE = "purchase.authorize"  # subject: the Purchase
CAPTURE = "purchase.capture"  # subject: the Purchase
VOID = "purchase.void"  # subject: the Purchase
REFUND = "purchase.refund"  # subject: the PurchaseRefund
PURCHASE_OPERATIONS = (AUTHORIZE, CAPTURE, VOID)

# A capture or void known NOT done (refused before it ran, a circuit open) is tried again under a new key
# (`movement_key(base, attempt)`), and an automatic refund known not done is asked for again, at most this
# many times in all; then a staff alert. A PaymentIntent is captured or canceled at most once, and a refund
# is never sent again after an unknown outcome, so no retry can move money twice.
MAX_ATTEMPTS = 3


def purchase_reload(purchase_pk: int) -> Purchase:
    return Purchase.objects.select_related("service").get(pk=purchase_pk)


def purchase_locked(purchase_pk: int) -> Purchase:
    purchase = Purchase.objects.select_for_update().filter(pk=purchase_pk).first()
    if purchase is None:
        raise NotFound(f"purchase {purchase_pk} does not exist", details={"purchase": purchase_pk})
    return purchase


def purchase_movements(purchase_pk: int) -> QuerySet[MoneyMovement]:
    """Every money movement made for a purchase: its authorization, captures, voids and refunds."""
    refunds = PurchaseRefund.objects.filter(purchase_id=purchase_pk).values("pk")
    return MoneyMovement.objects.filter(
        Q(operation__in=PURCHASE_OPERATIONS, subject_id=purchase_pk) | Q(operation=REFUND, subject_id__in=refunds)
    ).order_by("id")


def ledger_accounts(currency: str) -> dict[str, str]:
    """Stripe's clearing and fee accounts and service revenue, from the chart of accounts."""
    codes = chart_accounts(currency, "clearing", "fees", "service_revenue", provider="stripe")
    return {"clearing": codes["clearing"], "fees": codes["fees"], "revenue": codes["service_revenue"]}


def purchase_alert(purchase: Purchase, title: str, detail: str) -> None:
    alert_raise(
        key=f"escrow:purchase:{purchase.pk}",
        title=f"Purchase {purchase.pk}: {title}",
        detail=detail,
        action_required="Look the PaymentIntent up in Stripe and settle the purchase by hand; see its audit log.",
        severity=Alert.Severity.CRITICAL,
    )


def movements_run(movements: Iterable[MoneyMovement]) -> None:
    """Send the movements a decision recorded, once its transaction has committed (never inside one)."""
    for movement in movements:
        movement_run(movement)
