"""Spend limits API (/api/v1/spend-limits/): a client user sees what they may still spend, and when it resets.

Per-user limits show the user's own usage; platform-wide limits show only that they apply, never
what others spent.
"""

from __future__ import annotations

from django.urls import path
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from core.errors import InvalidRequest
from core.money import CURRENCY_EXPONENTS
from escrow.limits import LimitUsage, spend_usage
from escrow.models import SpendLimit

app_name = "spend-limits-api"


class LimitUsageSerializer(serializers.Serializer):
    scope = serializers.ChoiceField(choices=SpendLimit.Scope.choices)
    window = serializers.ChoiceField(choices=SpendLimit.Window.choices)
    currency = serializers.CharField()
    max_amount_minor = serializers.IntegerField(allow_null=True)
    max_count = serializers.IntegerField(allow_null=True)
    used_amount_minor = serializers.IntegerField(allow_null=True, help_text="Null for a platform-wide limit.")
    used_count = serializers.IntegerField(allow_null=True, help_text="Null for a platform-wide limit.")
    resets_at = serializers.DateTimeField()


def _usage_row(usage: LimitUsage) -> dict[str, object]:
    own = usage.limit.scope == SpendLimit.Scope.USER
    return {
        "scope": usage.limit.scope,
        "window": usage.limit.window,
        "currency": usage.limit.currency,
        "max_amount_minor": usage.limit.max_amount_minor,
        "max_count": usage.limit.max_count,
        "used_amount_minor": usage.used.minor if own else None,
        "used_count": usage.count if own else None,
        "resets_at": usage.resets_at,
    }


class MySpendLimitsView(APIView):
    @extend_schema(
        parameters=[
            OpenApiParameter(
                "currency", str, required=True, enum=sorted(CURRENCY_EXPONENTS), description="ISO 4217 code, e.g. PHP."
            )
        ],
        responses=LimitUsageSerializer(many=True),
    )
    def get(self, request: Request) -> Response:
        currency = request.query_params.get("currency", "")
        if currency not in CURRENCY_EXPONENTS:
            raise InvalidRequest(
                f"unknown currency {currency!r}",
                user_message="Give the currency as an ISO 4217 code, e.g. PHP.",
                action_required="Add ?currency=PHP (or another supported code) to the request.",
                details={"currency": currency},
            )
        rows = [_usage_row(usage) for usage in spend_usage(user=request.user, currency=currency)]
        return Response(LimitUsageSerializer(rows, many=True).data)


urlpatterns = [path("", MySpendLimitsView.as_view(), name="mine")]
