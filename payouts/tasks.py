"""Celery entry points for payouts: thin and re-entrant."""

from celery import shared_task

from payouts.services import batches_sync_due


@shared_task(name="payouts.sync_batches")
def sync_batches_task() -> int:
    """Resolve unknown submissions on schedule and refresh batches being paid."""
    return batches_sync_due()
