"""Payouts API (/api/v1/payouts/): staff run cycles and batches; client users see their own payouts.

Thin views over payouts.services. Staff endpoints need is_staff; the services check the fine permissions
(prepare, approve, execute) and maker-checker. Every POST needs an Idempotency-Key (Stripe semantics).
Disbursing a cycle is rate limited to one request per cycle per minute per staff user, on the shared cache.
Amounts are integer minor units plus currency.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from django.db.models import QuerySet
from django.urls import path
from django_ratelimit.core import get_usage
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema, extend_schema_field
from rest_framework import generics, serializers
from rest_framework.permissions import IsAdminUser
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from core.api import IDEMPOTENCY_KEY_HEADER, IdempotentMixin, error_responses
from core.errors import NotFound, RateLimited
from core.permissions import require_permission
from payouts.models import PayoutBatch, PayoutItem
from payouts.selectors import StatusProgress, movement_status_by_batch, progress_by_batch
from payouts.services import batch_approve, batch_execute, batch_retry_failed, cycle_disburse, cycle_prepare

app_name = "payouts-api"

DISBURSE_RATE = "1/m"
DISBURSE_RATE_PERIOD_SECONDS = 60

RETRY_AFTER = OpenApiParameter(
    "Retry-After", int, OpenApiParameter.HEADER, response=[429], description="Seconds to wait before trying again."
)
_ERROR_TEXT = {
    400: "Invalid request, or no Idempotency-Key.",
    401: "Not authenticated.",
    403: "Not staff, or missing the permission named in the details (or maker-checker).",
    404: "Not found.",
    409: "Conflicts with the current state, or the same Idempotency-Key is in flight.",
    422: "Idempotency-Key reused with a different request.",
    423: "Another staff user is processing this cycle (holder and expiry in the details).",
    429: "Disbursed by you less than a minute ago; see Retry-After.",
    503: "The provider is unavailable; nothing was sent.",
}


def _errors(*codes: int) -> dict[int, OpenApiResponse]:
    return error_responses(_ERROR_TEXT, *codes)


# --- serializers ---------------------------------------------------------------------------


class PayoutProgressSerializer(serializers.Serializer):
    status = serializers.ChoiceField(choices=PayoutItem.Status.choices)
    count = serializers.IntegerField()
    amount_minor = serializers.IntegerField(help_text="In the batch currency.")


class PayoutBatchSerializer(serializers.ModelSerializer):
    progress = serializers.SerializerMethodField(help_text="Item counts and amounts by item status.")
    provider_call = serializers.SerializerMethodField(
        help_text=(
            "What the provider did with the batch's send, as the money movement records it: pending, waiting, "
            "unknown (being found out; a `submitting` batch is never sent under another id), succeeded or "
            "declined; for Stripe, the most telling status of the items' transfers. Empty before the send."
        )
    )

    class Meta:
        model = PayoutBatch
        fields = (
            "id", "cycle", "provider", "sender_batch_id", "provider_batch_id", "status", "currency", "total_minor",
            "item_count", "retry_of", "prepared_by", "approved_by", "failure_reason", "created_at", "updated_at",
            "progress", "provider_call",
        )  # fmt: skip
        read_only_fields = fields

    @extend_schema_field(PayoutProgressSerializer(many=True))
    def get_progress(self, batch: PayoutBatch) -> list[dict[str, Any]]:
        progress: dict[int, list[StatusProgress]] = self.context.get("progress") or progress_by_batch([batch.pk])
        return PayoutProgressSerializer(progress.get(batch.pk, []), many=True).data

    def get_provider_call(self, batch: PayoutBatch) -> str:
        calls: dict[int, str] | None = self.context.get("provider_calls")
        if calls is None:
            calls = movement_status_by_batch([batch.pk])
        return calls.get(batch.pk, "")


class CycleBatchesSerializer(serializers.Serializer):
    cycle = serializers.IntegerField()
    batches = PayoutBatchSerializer(many=True)


class MyPayoutSerializer(serializers.ModelSerializer):
    cycle = serializers.IntegerField(source="batch.cycle_id")
    cycle_name = serializers.CharField(source="batch.cycle.name")
    recipient = serializers.CharField(source="receiver")

    class Meta:
        model = PayoutItem
        fields = ("id", "cycle", "cycle_name", "amount_minor", "currency", "status", "recipient_type", "recipient",
                  "created_at", "updated_at")  # fmt: skip
        read_only_fields = fields


def _batches_body(cycle_id: int, batches: Sequence[PayoutBatch]) -> dict[str, Any]:
    ids = [batch.pk for batch in batches]
    context = {"progress": progress_by_batch(ids), "provider_calls": movement_status_by_batch(ids)}
    return CycleBatchesSerializer({"cycle": cycle_id, "batches": batches}, context=context).data


def _batch(batch_id: int) -> PayoutBatch:
    batch = PayoutBatch.objects.filter(pk=batch_id).first()
    if batch is None:
        raise NotFound(f"payout batch {batch_id} does not exist", details={"batch_id": batch_id})
    return batch


def disburse_rate_limit(request: Request, *, cycle_id: int) -> None:
    """One disburse per cycle per minute per staff user (django-ratelimit's fixed windows, shared cache)."""
    usage = get_usage(
        request,
        group="payouts.cycle_disburse",
        key=lambda _group, _request: f"user:{request.user.pk}:cycle:{cycle_id}",
        rate=DISBURSE_RATE,
        method="POST",
        increment=True,
    )
    if usage is None or not usage["should_limit"]:
        return
    # The window ends at time_left; a request in that very second still counts against it. Without the
    # cache (time_left -1) we refuse for a full period: disbursing is never unlimited.
    wait = usage["time_left"] + 1 if usage["time_left"] >= 0 else DISBURSE_RATE_PERIOD_SECONDS
    raise RateLimited(
        f"{request.user.get_username()} disbursed cycle {cycle_id} less than a minute ago",
        retry_after_seconds=wait,
        user_message="You asked to disburse this cycle less than a minute ago.",
        action_required=f"Check the cycle's batches first; if still needed, try again in {wait} s.",
        details={"cycle_id": cycle_id},
    )


# --- staff ---------------------------------------------------------------------------------


class _StaffView(APIView):
    permission_classes = (IsAdminUser,)


class CycleDisburseView(IdempotentMixin, _StaffView):
    @extend_schema(
        tags=["payouts"],
        summary="Disburse a cycle: prepare its batches and send those needing no further approval",
        request=None,
        parameters=[IDEMPOTENCY_KEY_HEADER, RETRY_AFTER],
        responses={200: CycleBatchesSerializer, **_errors(400, 401, 403, 404, 409, 422, 423, 429, 503)},
    )
    def post(self, request: Request, cycle_id: int) -> Response:
        disburse_rate_limit(request, cycle_id=cycle_id)
        return Response(_batches_body(cycle_id, cycle_disburse(cycle_id=cycle_id, actor=request.user)))


class CyclePrepareView(IdempotentMixin, _StaffView):
    @extend_schema(
        tags=["payouts"],
        summary="Prepare a cycle's batches and reserve their money (same winners, same batches)",
        request=None,
        parameters=[IDEMPOTENCY_KEY_HEADER],
        responses={200: CycleBatchesSerializer, **_errors(400, 401, 403, 404, 409, 422, 423)},
    )
    def post(self, request: Request, cycle_id: int) -> Response:
        return Response(_batches_body(cycle_id, cycle_prepare(cycle_id=cycle_id, actor=request.user)))


class BatchDetailView(_StaffView):
    @extend_schema(
        tags=["payouts"],
        summary="A batch's status with its progress",
        responses={200: PayoutBatchSerializer, **_errors(401, 403, 404)},
    )
    def get(self, request: Request, batch_id: int) -> Response:
        require_permission(request.user, "payouts.view_payoutbatch")
        return Response(PayoutBatchSerializer(_batch(batch_id)).data)


class BatchApproveView(IdempotentMixin, _StaffView):
    @extend_schema(
        tags=["payouts"],
        summary="Approve a prepared batch (a different staff user than the one who prepared it)",
        request=None,
        parameters=[IDEMPOTENCY_KEY_HEADER],
        responses={200: PayoutBatchSerializer, **_errors(400, 401, 403, 404, 409, 422)},
    )
    def post(self, request: Request, batch_id: int) -> Response:
        batch = batch_approve(batch_id=_batch(batch_id).pk, approver=request.user)
        return Response(PayoutBatchSerializer(batch).data)


class BatchExecuteView(IdempotentMixin, _StaffView):
    @extend_schema(
        tags=["payouts"],
        summary="Send an approved batch to its provider, once",
        request=None,
        parameters=[IDEMPOTENCY_KEY_HEADER],
        responses={200: PayoutBatchSerializer, **_errors(400, 401, 403, 404, 409, 422, 423, 503)},
    )
    def post(self, request: Request, batch_id: int) -> Response:
        batch = batch_execute(batch_id=_batch(batch_id).pk, actor=request.user)
        return Response(PayoutBatchSerializer(batch).data)


class BatchRetryFailedView(IdempotentMixin, _StaffView):
    @extend_schema(
        tags=["payouts"],
        summary="Prepare a retry batch for the winners this batch did not pay",
        request=None,
        parameters=[IDEMPOTENCY_KEY_HEADER],
        responses={200: CycleBatchesSerializer, **_errors(400, 401, 403, 404, 409, 422, 423)},
    )
    def post(self, request: Request, batch_id: int) -> Response:
        batch = _batch(batch_id)
        return Response(_batches_body(batch.cycle_id, batch_retry_failed(batch_id=batch.pk, actor=request.user)))


# --- client users ---------------------------------------------------------------------------


@extend_schema(
    tags=["payouts"],
    summary="My payouts: the caller's own payout items",
    responses={200: MyPayoutSerializer(many=True), **_errors(401)},
)
class MyPayoutsView(generics.ListAPIView):
    serializer_class = MyPayoutSerializer

    def get_queryset(self) -> QuerySet[PayoutItem]:
        if getattr(self, "swagger_fake_view", False):  # schema generation
            return PayoutItem.objects.none()
        return (
            PayoutItem.objects.filter(selection__user=self.request.user).select_related("batch__cycle").order_by("-pk")
        )


urlpatterns = [
    path("cycles/<int:cycle_id>/disburse/", CycleDisburseView.as_view(), name="cycle-disburse"),
    path("cycles/<int:cycle_id>/prepare/", CyclePrepareView.as_view(), name="cycle-prepare"),
    path("batches/<int:batch_id>/", BatchDetailView.as_view(), name="batch-detail"),
    path("batches/<int:batch_id>/approve/", BatchApproveView.as_view(), name="batch-approve"),
    path("batches/<int:batch_id>/execute/", BatchExecuteView.as_view(), name="batch-execute"),
    path("batches/<int:batch_id>/retry-failed/", BatchRetryFailedView.as_view(), name="batch-retry-failed"),
    path("my-payouts/", MyPayoutsView.as_view(), name="my-payouts"),
]
