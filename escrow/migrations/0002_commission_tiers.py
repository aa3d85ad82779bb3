"""Seed the default commission tiers (5%, 8%, 12%, 15%); staff edit them in the admin afterwards."""

from django.db import migrations

DEFAULT_TIERS = (
    ("standard", 500, "Default tier for new sellers."),
    ("growth", 800, ""),
    ("premium", 1200, ""),
    ("high-risk", 1500, ""),
)


def seed(apps, schema_editor):
    tier_model = apps.get_model("escrow", "CommissionTier")
    for name, rate_bps, description in DEFAULT_TIERS:
        tier_model.objects.get_or_create(name=name, defaults={"rate_bps": rate_bps, "description": description})


class Migration(migrations.Migration):
    dependencies = [
        ("escrow", "0001_initial"),
    ]

    operations = [migrations.RunPython(seed, migrations.RunPython.noop)]
