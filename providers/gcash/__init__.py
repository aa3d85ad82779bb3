"""GCash, collected through PayMongo (Sources, Payments, Refunds); see client.py."""

from providers.gcash.client import InvalidWebhookSignature, PayMongoClient

__all__ = ["InvalidWebhookSignature", "PayMongoClient"]
