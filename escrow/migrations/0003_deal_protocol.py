"""Escrow deals move money through the protocol (providers.MoneyMovement): the deal's own sync fields go."""

from django.db import migrations


class Migration(migrations.Migration):
    dependencies = [
        ("escrow", "0002_commission_tiers"),
    ]

    operations = [
        migrations.RemoveField(model_name="escrowdeal", name="next_sync_at"),
        migrations.RemoveField(model_name="escrowdeal", name="sync_attempts"),
    ]
