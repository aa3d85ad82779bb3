"""The one money-moving protocol (DESIGN.md section 5): the only way the code moves money at a provider.

Domains describe an `Operation` (how to call, how to look up, what each outcome posts) and use:
- `movement_record` inside the transaction that changes their own row (the intent);
- `movement_run` after it commits (the first send);
- `movement_resolve` when a verified webhook says what happened;
- `movement_sync` for staff ("sync now"); `movements_sweep` is the beat job that follows up the rest.
"""

from providers.protocol.engine import (
    SYNC_SCHEDULE,
    in_real_transaction,
    movement_key,
    movement_latest,
    movement_record,
    movement_resolve,
    movement_run,
    movement_sync,
    movement_sync_by_staff,
    movements_due,
    movements_sweep,
    run_follow_ups,
)
from providers.protocol.operations import FollowUps, Operation, operation_get, operation_register

__all__ = [
    "SYNC_SCHEDULE",
    "FollowUps",
    "Operation",
    "in_real_transaction",
    "movement_key",
    "movement_latest",
    "movement_record",
    "movement_resolve",
    "movement_run",
    "movement_sync",
    "movement_sync_by_staff",
    "movements_due",
    "movements_sweep",
    "operation_get",
    "operation_register",
    "run_follow_ups",
]
