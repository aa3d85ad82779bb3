"""PayPal Payouts: the httpx client behind the provider boundary (see client.py)."""

from providers.paypal.client import (
    MAX_BATCH_ITEMS,
    PayoutItemRequest,
    PayPalClient,
    linked_batch_id,
    token_cache_seconds,
)

__all__ = ["MAX_BATCH_ITEMS", "PayPalClient", "PayoutItemRequest", "linked_batch_id", "token_cache_seconds"]
