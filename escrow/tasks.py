"""Celery entry points for escrow deals and purchases: load by id or sweep, call a service."""

from __future__ import annotations

from celery import shared_task

from escrow.purchases import purchases_time_out_due


@shared_task(name="escrow.time_out_purchases")
def time_out_purchases_task() -> int:
    """Void (or finish voiding) purchases not delivered by their deadline; every minute."""
    return purchases_time_out_due()


@shared_task(name="escrow.apply_deal_timeouts")
def apply_deal_timeouts_task() -> dict[str, object]:
    """Apply the timeout policy of held deals past deadline + grace, within the per-run breaker; every minute."""
    from escrow.deals import deal_timeouts_run

    run = deal_timeouts_run()
    return {
        "processed": run.processed,
        "failed": run.failed,
        "skipped": run.skipped,
        "oversized": len(run.oversized),
        "stopped_by": run.stopped_by,
    }


@shared_task(name="escrow.retry_deal_transfers")
def retry_deal_transfers_task() -> int:
    """A new attempt (new key) for escrow transfers Stripe declined, when their backoff is over; hourly.
    Transfers whose outcome is unknown are the protocol's sweeper's (providers.sweep_money_movements)."""
    from escrow.deals import deal_transfers_retry_due

    return deal_transfers_retry_due()
