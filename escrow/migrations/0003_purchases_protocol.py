"""Purchases move money through the one protocol (providers.MoneyMovement): the purchase's own sync fields go,
a refund's Stripe id is its `provider_reference` (the shared refund component's name), and a refund Stripe
accepted but has not settled is `waiting`.

Rows left in flight by the code before (an authorization, capture, void or refund sent, its outcome not
recorded) get a money movement under the key they were sent with, as `unknown` and due now: the protocol's
sweeper looks each one up before anything is sent again.
"""

from django.db import migrations, models
from django.utils import timezone

IN_FLIGHT = {  # purchase status -> the operation whose outcome it waits for, and its key's suffix
    "authorizing": ("purchase.authorize", "authorize"),
    "authorize_unknown": ("purchase.authorize", "authorize"),
    "capturing": ("purchase.capture", "capture"),
    "capture_unknown": ("purchase.capture", "capture"),
    "voiding": ("purchase.void", "void"),
    "void_unknown": ("purchase.void", "void"),
}


def _movement(MoneyMovement, *, operation, subject_id, key, amount_minor, currency, sent_at, now):
    MoneyMovement.objects.get_or_create(
        key=key,
        defaults={
            "operation": operation,
            "subject_id": subject_id,
            "provider": "stripe",
            "amount_minor": amount_minor,
            "currency": currency,
            "status": "unknown",
            "was_unknown": True,
            "sends": 1,
            "first_sent_at": sent_at,
            "next_sync_at": now,
            "failure_reason": "in flight before purchases moved to the protocol",
        },
    )


def adopt_in_flight(apps, schema_editor):
    Purchase = apps.get_model("escrow", "Purchase")
    PurchaseRefund = apps.get_model("escrow", "PurchaseRefund")
    MoneyMovement = apps.get_model("providers", "MoneyMovement")
    now = timezone.now()
    for purchase in Purchase.objects.filter(status__in=IN_FLIGHT).iterator():
        operation, suffix = IN_FLIGHT[purchase.status]
        if operation != "purchase.authorize" and not purchase.payment_intent_id:
            continue  # nothing to look up by: reconcile_refunds reports it
        _movement(MoneyMovement, operation=operation, subject_id=purchase.pk, key=f"purchase:{purchase.pk}:{suffix}",
                  amount_minor=purchase.amount_minor, currency=purchase.currency, sent_at=purchase.created_at,
                  now=now)  # fmt: skip
    for refund in PurchaseRefund.objects.filter(status__in=("pending", "unknown")).select_related("purchase"):
        _movement(MoneyMovement, operation="purchase.refund", subject_id=refund.pk,
                  key=f"purchase:{refund.purchase_id}:refund:{refund.pk}", amount_minor=refund.amount_minor,
                  currency=refund.purchase.currency, sent_at=refund.created_at, now=now)  # fmt: skip


class Migration(migrations.Migration):
    dependencies = [
        ("escrow", "0002_commission_tiers"),
        ("providers", "0007_money_movements"),
    ]

    operations = [
        migrations.RunPython(adopt_in_flight, migrations.RunPython.noop),
        migrations.RemoveIndex(model_name="purchase", name="escrow_purc_status_3e3092_idx"),
        migrations.RemoveField(model_name="purchase", name="next_sync_at"),
        migrations.RemoveField(model_name="purchase", name="sync_attempts"),
        migrations.RemoveField(model_name="purchaserefund", name="next_sync_at"),
        migrations.RemoveField(model_name="purchaserefund", name="sync_attempts"),
        migrations.RenameField(
            model_name="purchaserefund", old_name="provider_refund_id", new_name="provider_reference"
        ),
        migrations.AlterField(
            model_name="purchaserefund",
            name="provider_reference",
            field=models.CharField(blank=True, help_text="Stripe's refund id (re_...).", max_length=100),
        ),
        migrations.AlterField(
            model_name="purchaserefund",
            name="status",
            field=models.CharField(
                choices=[
                    ("pending", "Pending"),
                    ("waiting", "Accepted, waiting for Stripe"),
                    ("succeeded", "Succeeded"),
                    ("failed", "Failed"),
                    ("unknown", "Unknown"),
                ],
                default="pending",
                max_length=20,
            ),
        ),
    ]
