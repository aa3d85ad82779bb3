"""What each kind of summary counts: the raw model, and how its provider, currency, amount, outcome and
failure reason are read, as ORM expressions so the rollup stays one GROUP BY in the database.

Success and failure (for success rates and failure reasons), per kind:
- payment: succeeded / failed (`provider` is the last provider routed to);
- payment_attempt: succeeded / declined, per provider tried, so a fallback counts once for each provider;
- refund, purchase_refund: succeeded / failed;
- payout (items, by their batch's provider): SUCCESS / FAILED, RETURNED, BLOCKED, DENIED, REFUNDED, REVERSED
  (CANCELED, a batch staff canceled before sending, is final but neither);
- payout_batch: completed / denied (canceled is neither);
- escrow: transferred / failed, expired (refunded is the deal not happening, not a failure of the money);
- purchase: captured, refunded / declined, voided (voided: the service failed, was cancelled or timed out).

Time to a final state is measured from `created_at` to the moment the row reached its final status. Where
rows go on changing after that (a refund bumps its payment's or purchase's `updated_at`) only the rows still
untouched are timed; payment attempts are not timed (their status is updated without a timestamp).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from django.db import models
from django.db.models import Case, F, Q, Value, When
from django.db.models.functions import Coalesce, NullIf, Substr

from analytics.models import Kind
from escrow.models import EscrowDeal, Purchase, PurchaseRefund
from payouts.models import PayoutBatch, PayoutItem
from providers.models import Payment, PaymentAttempt, Refund, RefundStatus

REASON_MAX_LENGTH = 255


@dataclass(frozen=True)
class KindSpec:
    kind: str
    model: type[models.Model]
    provider: models.Expression | F
    currency: models.Expression | F
    amount: models.Expression | F
    final: tuple[str, ...]
    succeeded: tuple[str, ...]
    failed: tuple[str, ...]
    reason_fields: tuple[str, ...]  # the first non-empty one is the reason; else the status itself
    finished_at: models.Expression | F | None = field(default_factory=lambda: F("updated_at"))  # None: not timed
    timed: Q = field(default_factory=Q)  # final rows whose `finished_at` is still the final move's

    def reason(self) -> models.Expression:
        texts = [NullIf(F(name), Value("")) for name in self.reason_fields]
        return Substr(Coalesce(*texts, F("status"), output_field=models.CharField()), 1, REASON_MAX_LENGTH)


_REFUND_FINAL = (RefundStatus.SUCCEEDED, RefundStatus.FAILED)
_ITEM = PayoutItem.Status
_ITEM_FAILED = (_ITEM.FAILED, _ITEM.RETURNED, _ITEM.BLOCKED, _ITEM.DENIED, _ITEM.REFUNDED, _ITEM.REVERSED)
_DEAL = EscrowDeal.Status
_PURCHASE = Purchase.Status

SPECS: dict[str, KindSpec] = {
    spec.kind: spec
    for spec in (
        KindSpec(
            kind=Kind.PAYMENT,
            model=Payment,
            provider=F("provider"),
            currency=F("currency"),
            amount=F("amount_minor"),
            final=(Payment.Status.SUCCEEDED, Payment.Status.FAILED),
            succeeded=(Payment.Status.SUCCEEDED,),
            failed=(Payment.Status.FAILED,),
            reason_fields=("failure_reason",),
            timed=Q(refunded_minor=0),
        ),
        KindSpec(
            kind=Kind.PAYMENT_ATTEMPT,
            model=PaymentAttempt,
            provider=F("provider"),
            currency=F("payment__currency"),
            amount=F("payment__amount_minor"),
            final=(PaymentAttempt.Status.SUCCEEDED, PaymentAttempt.Status.DECLINED),
            succeeded=(PaymentAttempt.Status.SUCCEEDED,),
            failed=(PaymentAttempt.Status.DECLINED,),
            reason_fields=("reason",),
            finished_at=None,
        ),
        KindSpec(
            kind=Kind.REFUND,
            model=Refund,
            provider=F("payment__provider"),
            currency=F("payment__currency"),
            amount=F("amount_minor"),
            final=_REFUND_FINAL,
            succeeded=(RefundStatus.SUCCEEDED,),
            failed=(RefundStatus.FAILED,),
            reason_fields=("failure_reason",),
        ),
        KindSpec(
            kind=Kind.PAYOUT,
            model=PayoutItem,
            provider=F("batch__provider"),
            currency=F("currency"),
            amount=F("amount_minor"),
            final=(_ITEM.SUCCESS, _ITEM.CANCELED, *_ITEM_FAILED),
            succeeded=(_ITEM.SUCCESS,),
            failed=_ITEM_FAILED,
            reason_fields=("error",),
        ),
        KindSpec(
            kind=Kind.PAYOUT_BATCH,
            model=PayoutBatch,
            provider=F("provider"),
            currency=F("currency"),
            amount=F("total_minor"),
            final=(PayoutBatch.Status.COMPLETED, PayoutBatch.Status.DENIED, PayoutBatch.Status.CANCELED),
            succeeded=(PayoutBatch.Status.COMPLETED,),
            failed=(PayoutBatch.Status.DENIED,),
            reason_fields=("failure_reason",),
        ),
        KindSpec(
            kind=Kind.ESCROW,
            model=EscrowDeal,
            provider=Value("stripe", output_field=models.CharField()),  # escrow holds are Stripe's
            currency=F("currency"),
            amount=F("amount_minor"),
            final=(_DEAL.TRANSFERRED, _DEAL.REFUNDED, _DEAL.EXPIRED, _DEAL.FAILED, _DEAL.REVERSED),
            succeeded=(_DEAL.TRANSFERRED,),
            failed=(_DEAL.FAILED, _DEAL.EXPIRED),
            reason_fields=("failure_reason",),
            finished_at=Case(
                When(status=_DEAL.TRANSFERRED, then=Coalesce(F("transferred_at"), F("updated_at"))),
                When(status=_DEAL.REFUNDED, then=Coalesce(F("refunded_at"), F("updated_at"))),
                default=F("updated_at"),
                output_field=models.DateTimeField(),
            ),
        ),
        KindSpec(
            kind=Kind.PURCHASE,
            model=Purchase,
            provider=F("provider"),
            currency=F("currency"),
            amount=F("amount_minor"),
            final=(_PURCHASE.CAPTURED, _PURCHASE.REFUNDED, _PURCHASE.VOIDED, _PURCHASE.DECLINED),
            succeeded=(_PURCHASE.CAPTURED, _PURCHASE.REFUNDED),
            failed=(_PURCHASE.DECLINED, _PURCHASE.VOIDED),
            reason_fields=("failure_reason", "outcome"),
            timed=Q(refund_reserved_minor=0),
        ),
        KindSpec(
            kind=Kind.PURCHASE_REFUND,
            model=PurchaseRefund,
            provider=F("purchase__provider"),
            currency=F("purchase__currency"),
            amount=F("amount_minor"),
            final=_REFUND_FINAL,
            succeeded=(RefundStatus.SUCCEEDED,),
            failed=(RefundStatus.FAILED,),
            reason_fields=("failure_reason",),
        ),
    )
}

# Refund rate: refunds of a kind over what that kind took (its succeeded amount), per provider, currency and day.
REFUND_OF: dict[str, str] = {Kind.PAYMENT: Kind.REFUND, Kind.PURCHASE: Kind.PURCHASE_REFUND}
