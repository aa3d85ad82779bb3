"""Maya: Maya Checkout, voids, refunds and webhooks; see client.py."""

from providers.maya.client import InvalidWebhookSignature, MayaClient

__all__ = ["InvalidWebhookSignature", "MayaClient"]
