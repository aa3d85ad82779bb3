"""DRF's tokens (stored in clear, never expiring, not revocable in the admin) become ApiTokens with the same key:
clients keep working, staff can now see and revoke them, and no key is left in clear. Not reversible: only the
keys' hashes are kept."""

import hashlib

from django.db import migrations


def drf_tokens_to_api_tokens(apps, schema_editor):
    Token = apps.get_model("authtoken", "Token")
    ApiToken = apps.get_model("core", "ApiToken")
    for token in Token.objects.all():
        api_token = ApiToken.objects.create(
            user_id=token.user_id,
            name="API token (from DRF authtoken)",
            key_prefix=token.key[:8],
            key_hash=hashlib.sha256(token.key.encode()).hexdigest(),
        )
        ApiToken.objects.filter(pk=api_token.pk).update(created_at=token.created)
    Token.objects.all().delete()


class Migration(migrations.Migration):
    dependencies = [
        ("core", "0005_apitoken"),
        ("authtoken", "0004_alter_tokenproxy_options"),
    ]

    operations = [migrations.RunPython(drf_tokens_to_api_tokens, migrations.RunPython.noop)]
