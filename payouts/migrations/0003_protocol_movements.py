"""Payouts onto the money-moving protocol: the batch's own unknown status and sync fields go.

Batches whose send was in flight (`submitting`, or `unknown` under the old sync) get the money movement the
protocol follows from now on, as sent with an unknown outcome, due for the sweeper at once: a PayPal batch
create keyed by its sender_batch_id, or a Stripe transfer per item not known to be paid, keyed as
`payout-item:{id}:transfer` (looked up by that key before anything is sent). Items UNKNOWN become NEW.
"""

from django.db import migrations, models
from django.utils import timezone

CARRIED_OVER = "carried over from the payouts sync: the outcome of the send is not known"


def _open_movement(movement_model, *, operation, subject_id, key, provider, amount_minor, currency, sent_at, now):
    movement_model.objects.get_or_create(
        key=key,
        defaults={
            "operation": operation,
            "subject_id": subject_id,
            "provider": provider,
            "amount_minor": amount_minor,
            "currency": currency,
            "status": "unknown",
            "sends": 1,
            "first_sent_at": sent_at,
            "was_unknown": True,
            "next_sync_at": now,
            "failure_reason": CARRIED_OVER,
        },
    )


def carry_over_in_flight_sends(apps, schema_editor):
    batch_model = apps.get_model("payouts", "PayoutBatch")
    item_model = apps.get_model("payouts", "PayoutItem")
    movement_model = apps.get_model("providers", "MoneyMovement")
    now = timezone.now()
    for batch in batch_model.objects.filter(status__in=["submitting", "unknown"], provider="paypal"):
        _open_movement(
            movement_model,
            operation="payout.paypal_batch",
            subject_id=batch.pk,
            key=batch.sender_batch_id,
            provider="paypal",
            amount_minor=batch.total_minor,
            currency=batch.currency,
            sent_at=batch.updated_at,
            now=now,
        )
    unpaid_transfers = item_model.objects.filter(batch__provider="stripe", status__in=["NEW", "UNKNOWN"]).filter(
        batch__status__in=["submitting", "unknown", "submitted"]
    )
    for item in unpaid_transfers.select_related("batch"):
        _open_movement(
            movement_model,
            operation="payout.stripe_transfer",
            subject_id=item.pk,
            key=f"payout-item:{item.pk}:transfer",
            provider="stripe",
            amount_minor=item.amount_minor,
            currency=item.currency,
            sent_at=item.batch.updated_at,
            now=now,
        )
    item_model.objects.filter(status="UNKNOWN").update(status="NEW")
    batch_model.objects.filter(status="unknown").update(status="submitting")
    still_sending = item_model.objects.filter(status="NEW").values("batch_id")
    batch_model.objects.filter(provider="stripe", status="submitted", pk__in=still_sending).update(status="submitting")


class Migration(migrations.Migration):
    dependencies = [
        ("payouts", "0002_legacy_payouts"),
        ("providers", "0007_money_movements"),
    ]

    operations = [
        migrations.RemoveConstraint(
            model_name="payoutitem",
            name="one_live_payout_per_selection",
        ),
        migrations.RunPython(carry_over_in_flight_sends, migrations.RunPython.noop),
        migrations.RemoveField(
            model_name="payoutbatch",
            name="next_sync_at",
        ),
        migrations.RemoveField(
            model_name="payoutbatch",
            name="sync_attempts",
        ),
        migrations.AlterField(
            model_name="payoutbatch",
            name="status",
            field=models.CharField(
                choices=[
                    ("prepared", "Prepared"),
                    ("approved", "Approved"),
                    ("submitting", "Submitting"),
                    ("submitted", "Submitted"),
                    ("completed", "Completed"),
                    ("denied", "Denied"),
                    ("canceled", "Canceled"),
                ],
                max_length=20,
            ),
        ),
        migrations.AlterField(
            model_name="payoutitem",
            name="status",
            field=models.CharField(
                choices=[
                    ("NEW", "New"),
                    ("PENDING", "Pending"),
                    ("UNCLAIMED", "Unclaimed"),
                    ("ONHOLD", "Onhold"),
                    ("SUCCESS", "Success"),
                    ("FAILED", "Failed"),
                    ("RETURNED", "Returned"),
                    ("BLOCKED", "Blocked"),
                    ("REFUNDED", "Refunded"),
                    ("REVERSED", "Reversed"),
                    ("DENIED", "Denied"),
                    ("CANCELED", "Canceled"),
                ],
                default="NEW",
                max_length=20,
            ),
        ),
        migrations.AddConstraint(
            model_name="payoutitem",
            constraint=models.UniqueConstraint(
                condition=models.Q(("status__in", ("NEW", "PENDING", "UNCLAIMED", "ONHOLD", "SUCCESS"))),
                fields=("selection",),
                name="one_live_payout_per_selection",
            ),
        ),
    ]
