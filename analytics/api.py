"""Staff analytics API (/api/v1/analytics/): the dashboard's figures as JSON, read from the summary tables.

GET only; finance staff holding analytics.view_dailystatussummary (the Finance viewer role has it). Query
parameters are bounded (`days` 1 to 366, `top` 1 to 50, `kind` one of the kinds); anything else is a 400 in
the one error body. Shapes are those of analytics.selectors, whose docstring explains each figure.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from django.urls import path
from drf_spectacular.utils import extend_schema
from rest_framework import exceptions as drf_exceptions
from rest_framework import serializers
from rest_framework.permissions import BasePermission, IsAuthenticated
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from analytics import selectors
from analytics.models import Kind
from core.errors import PermissionDenied

VIEW_PERMISSION = "analytics.view_dailystatussummary"

# --- query parameters -------------------------------------------------------------------------


class WholeNumberField(serializers.IntegerField):
    """A query parameter of ASCII digits only: "7" is 7; "7.0", "+7", " 7" and non-ASCII digits are a 400."""

    def to_internal_value(self, data: Any) -> int:
        if not (isinstance(data, str) and data.isascii() and data.isdigit()):
            self.fail("invalid")
        return super().to_internal_value(data)


class WindowQuerySerializer(serializers.Serializer):
    days = WholeNumberField(
        min_value=1, max_value=selectors.MAX_DAYS, default=14, help_text="The last N UTC days, today included."
    )

    def to_internal_value(self, data: Any) -> dict[str, Any]:
        # DRF reads `?days=` from a query string as "not given"; here a parameter is either left out or valid.
        blank = {name: ["Leave the parameter out or give a value."] for name in self.fields if data.get(name) == ""}
        if blank:
            raise serializers.ValidationError(blank)
        return super().to_internal_value(data)


class KindQuerySerializer(WindowQuerySerializer):
    kind = serializers.ChoiceField(choices=Kind.choices, default=Kind.PAYMENT, help_text="What is counted.")


class ReasonsQuerySerializer(KindQuerySerializer):
    top = WholeNumberField(min_value=1, max_value=selectors.MAX_TOP, default=10, help_text="Reasons listed.")


class RefundRateQuerySerializer(WindowQuerySerializer):
    kind = serializers.ChoiceField(
        choices=[(kind, Kind(kind).label) for kind in selectors.REFUND_RATE_KINDS],
        default=Kind.PAYMENT,
        help_text="payment: payment refunds over payments; purchase: purchase refunds over purchases.",
    )


# --- responses ----------------------------------------------------------------------------------


def _per_day(help_text: str, *, nullable: bool = False) -> serializers.ListField:
    return serializers.ListField(child=serializers.IntegerField(allow_null=nullable), help_text=help_text)


class _Chart(serializers.Serializer):
    kind = serializers.ChoiceField(choices=Kind.choices)
    days = serializers.IntegerField()
    labels = serializers.ListField(child=serializers.DateField(), help_text="UTC days, oldest first.")
    as_of = serializers.DateTimeField(allow_null=True, help_text="When the newest figure read was computed.")


class VolumeSeriesSerializer(serializers.Serializer):
    provider = serializers.CharField()
    currency = serializers.CharField()
    count = _per_day("Rows created that day, any status.")
    amount_minor = _per_day("Their amount, minor units of the currency.")
    succeeded_count = _per_day("Of them, succeeded.")
    succeeded_amount_minor = _per_day("Their amount, minor units.")


class VolumeSerializer(_Chart):
    series = VolumeSeriesSerializer(many=True)


class SuccessRateSeriesSerializer(serializers.Serializer):
    provider = serializers.CharField()
    succeeded = _per_day("Rows created that day that succeeded.")
    failed = _per_day("Rows created that day that failed.")
    rate_bps = _per_day("succeeded / (succeeded + failed) in basis points; null when neither.", nullable=True)


class SuccessRateSerializer(_Chart):
    series = SuccessRateSeriesSerializer(many=True)


class ReasonSeriesSerializer(serializers.Serializer):
    provider = serializers.CharField()
    data = serializers.ListField(child=serializers.IntegerField(), help_text="Count per reason, as in labels.")


class FailureReasonsSerializer(serializers.Serializer):
    kind = serializers.ChoiceField(choices=Kind.choices)
    days = serializers.IntegerField()
    labels = serializers.ListField(child=serializers.CharField(allow_blank=True), help_text="Reasons, most first.")
    totals = serializers.ListField(child=serializers.IntegerField(), help_text="Count per reason, all providers.")
    series = ReasonSeriesSerializer(many=True)
    as_of = serializers.DateTimeField(allow_null=True)


class RefundRateSeriesSerializer(serializers.Serializer):
    provider = serializers.CharField()
    currency = serializers.CharField()
    paid_minor = _per_day("Succeeded amount created that day, minor units.")
    refunded_minor = _per_day("Succeeded refunds created that day, minor units.")
    rate_bps = _per_day("refunded / paid in basis points (may pass 10000); null when nothing was paid.", nullable=True)


class RefundRateSerializer(_Chart):
    series = RefundRateSeriesSerializer(many=True)


class TimeToFinalSeriesSerializer(serializers.Serializer):
    provider = serializers.CharField()
    final_count = _per_day("Rows created that day already final (and timed).")
    average_seconds = _per_day("Their mean seconds from creation to the final state; null when none.", nullable=True)


class TimeToFinalSerializer(_Chart):
    series = TimeToFinalSeriesSerializer(many=True)


class StatusRowSerializer(serializers.Serializer):
    provider = serializers.CharField(allow_blank=True)
    currency = serializers.CharField(allow_blank=True)
    status = serializers.CharField()
    count = serializers.IntegerField()
    amount_minor = serializers.IntegerField()


class StatusBreakdownSerializer(serializers.Serializer):
    kind = serializers.ChoiceField(choices=Kind.choices)
    days = serializers.IntegerField()
    since = serializers.DateField()
    until = serializers.DateField()
    rows = StatusRowSerializer(many=True)
    as_of = serializers.DateTimeField(allow_null=True)


# --- views --------------------------------------------------------------------------------------


class IsFinanceAnalyst(BasePermission):
    def has_permission(self, request: Request, view: APIView) -> bool:
        user = request.user
        return bool(user.is_authenticated and user.is_staff and user.has_perm(VIEW_PERMISSION))


class _AnalyticsView(APIView):
    permission_classes = (IsAuthenticated, IsFinanceAnalyst)

    def permission_denied(self, request: Request, message: str | None = None, code: str | None = None) -> None:
        if request.authenticators and not request.successful_authenticator:
            raise drf_exceptions.NotAuthenticated()
        raise PermissionDenied(f"staff with {VIEW_PERMISSION} required", details={"permission": VIEW_PERMISSION})

    @staticmethod
    def answer(
        request: Request,
        query_class: type[serializers.Serializer],
        read: Callable[..., dict[str, Any]],
        response_class: type[serializers.Serializer],
    ) -> Response:
        query = query_class(data=request.query_params)
        query.is_valid(raise_exception=True)
        return Response(response_class(read(**query.validated_data)).data)


def _schema(summary: str, query: type[serializers.Serializer], response: type[serializers.Serializer]) -> Any:
    return extend_schema(
        tags=["analytics"],
        summary=summary,
        description=f"{summary}. Finance staff with {VIEW_PERMISSION}; figures from the daily summary tables.",
        parameters=[query],
        responses={200: response},
    )


class VolumeView(_AnalyticsView):
    @_schema("Volume by provider and day", KindQuerySerializer, VolumeSerializer)
    def get(self, request: Request) -> Response:
        return self.answer(request, KindQuerySerializer, selectors.volume_by_provider_day, VolumeSerializer)


class SuccessRateView(_AnalyticsView):
    @_schema("Success rate by provider and day", KindQuerySerializer, SuccessRateSerializer)
    def get(self, request: Request) -> Response:
        return self.answer(request, KindQuerySerializer, selectors.success_rate_by_provider_day, SuccessRateSerializer)


class FailureReasonsView(_AnalyticsView):
    @_schema("Top failure reasons", ReasonsQuerySerializer, FailureReasonsSerializer)
    def get(self, request: Request) -> Response:
        return self.answer(request, ReasonsQuerySerializer, selectors.failure_reasons, FailureReasonsSerializer)


class RefundRateView(_AnalyticsView):
    @_schema("Refund rate by provider and day", RefundRateQuerySerializer, RefundRateSerializer)
    def get(self, request: Request) -> Response:
        return self.answer(
            request, RefundRateQuerySerializer, selectors.refund_rate_by_provider_day, RefundRateSerializer
        )


class TimeToFinalView(_AnalyticsView):
    @_schema("Average time to a final state by provider and day", KindQuerySerializer, TimeToFinalSerializer)
    def get(self, request: Request) -> Response:
        return self.answer(
            request, KindQuerySerializer, selectors.seconds_to_final_by_provider_day, TimeToFinalSerializer
        )


class StatusBreakdownView(_AnalyticsView):
    @_schema("Counts and amounts by status", KindQuerySerializer, StatusBreakdownSerializer)
    def get(self, request: Request) -> Response:
        return self.answer(request, KindQuerySerializer, selectors.status_breakdown, StatusBreakdownSerializer)


app_name = "analytics-api"

urlpatterns = [
    path("volume/", VolumeView.as_view(), name="volume"),
    path("success-rate/", SuccessRateView.as_view(), name="success-rate"),
    path("failure-reasons/", FailureReasonsView.as_view(), name="failure-reasons"),
    path("refund-rate/", RefundRateView.as_view(), name="refund-rate"),
    path("time-to-final/", TimeToFinalView.as_view(), name="time-to-final"),
    path("statuses/", StatusBreakdownView.as_view(), name="statuses"),
]
