"""Default payment methods and fee rules; finance staff change them in the admin."""

from datetime import UTC, datetime

from django.db import migrations

EFFECTIVE_FROM = datetime(2026, 1, 1, tzinfo=UTC)

METHODS = [
    # provider, method, currency, max_minor, priority
    ("gcash", "gcash", "PHP", 10_000_000, 10),  # PHP 100,000 per payment
    ("maya", "maya_wallet", "PHP", 10_000_000, 20),
    ("stripe", "card", "PHP", 99_999_999, 30),
    ("stripe", "card", "USD", 99_999_999, 30),
]  # PayPal is used for payouts only (Payouts API), not for customer payments

FEES = [
    # provider, method, currency, percent_bps, fixed_minor
    ("gcash", "gcash", "PHP", 350, 1_000),  # 3.5% + PHP 10
    ("maya", "maya_wallet", "PHP", 250, 1_500),  # 2.5% + PHP 15
    ("stripe", "card", "PHP", 350, 1_500),
    ("stripe", "card", "USD", 290, 30),  # 2.9% + USD 0.30
]


def seed(apps, schema_editor):
    PaymentMethod = apps.get_model("providers", "PaymentMethod")
    FeeRule = apps.get_model("providers", "FeeRule")
    for provider, method, currency, max_minor, priority in METHODS:
        PaymentMethod.objects.get_or_create(
            provider=provider, method=method, currency=currency, defaults={"max_minor": max_minor, "priority": priority}
        )
    for provider, method, currency, percent_bps, fixed_minor in FEES:
        FeeRule.objects.get_or_create(
            provider=provider,
            method=method,
            currency=currency,
            effective_from=EFFECTIVE_FROM,
            defaults={"percent_bps": percent_bps, "fixed_minor": fixed_minor},
        )


class Migration(migrations.Migration):
    dependencies = [("providers", "0002_payment_methods_and_fees")]
    operations = [migrations.RunPython(seed, migrations.RunPython.noop)]
