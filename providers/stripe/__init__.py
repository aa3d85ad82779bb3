"""Stripe: PaymentIntents (holds, captures, voids), refunds, Connect transfers and webhook verification."""

from providers.stripe.client import StripeProviderClient, WebhookSignatureError, verify_webhook

__all__ = ["StripeProviderClient", "WebhookSignatureError", "verify_webhook"]
