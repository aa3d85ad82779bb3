"""Payments API (/api/v1/payments/): thin views over providers.payments and routing.

Amounts are integer minor units plus currency. Every POST needs an
Idempotency-Key; a payment's key is also the service's own once-only key.
Customers see only their own payments (404 otherwise).
"""

from __future__ import annotations

from typing import Any

from django.urls import path
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import serializers, status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from core.api import (
    IDEMPOTENCY_KEY_HEADER,
    CurrencyField,
    IdempotentMixin,
    MinorUnitsField,
    column_text,
    error_responses,
)
from core.errors import NotFound
from core.money import Money, MoneyError, amount_max_minor_any, money_in_bounds
from providers.models import CustomerDefaultMethod, PaymentMethod, Provider
from providers.models import Payment as PaymentRow
from providers.payments import payment_initiate, payment_sync, refund_request
from providers.routing import Choice, route_payment


class MoneyField(serializers.Serializer):
    # also read from query strings (MethodQuerySerializer)
    amount_minor = serializers.IntegerField(min_value=1, max_value=amount_max_minor_any())
    currency = CurrencyField()

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        try:
            attrs["money"] = money_in_bounds(attrs["amount_minor"], attrs["currency"])
        except MoneyError as error:
            raise serializers.ValidationError({"amount_minor": str(error)}) from error
        return attrs


def _choice(provider: str | None, method: str | None) -> Choice | None:
    return Choice(provider, method) if provider and method else None


class PaymentCreateSerializer(MoneyField):
    amount_minor = MinorUnitsField(min_value=1)  # a JSON body: an integer, never a float or a string
    provider = serializers.ChoiceField(choices=Provider.choices, required=False, help_text="Explicit choice.")
    method = column_text(PaymentRow, "method", required=False)
    preferred_provider = serializers.ChoiceField(choices=Provider.choices, required=False)
    preferred_method = column_text(PaymentRow, "method", required=False)
    payment_method_token = column_text(
        PaymentRow, "payment_method_token", required=False, default="", help_text="e.g. a Stripe pm_..."
    )


class PaymentSerializer(serializers.ModelSerializer):
    redirect_url = serializers.URLField(
        read_only=True, allow_null=True, help_text="Where to send the customer to pay (wallets); null for cards."
    )

    def to_representation(self, instance: PaymentRow) -> dict[str, Any]:
        body = super().to_representation(instance)
        body["redirect_url"] = body["redirect_url"] or None  # stored as "", which is not a URI
        return body

    class Meta:
        model = PaymentRow
        fields = (
            "reference", "status", "amount_minor", "currency", "provider", "method", "redirect_url",
            "fee_minor", "platform_fee_minor", "refunded_minor", "failure_reason", "created_at", "updated_at",
        )  # fmt: skip
        read_only_fields = fields


class RefundCreateSerializer(serializers.Serializer):
    amount_minor = MinorUnitsField(min_value=1, required=False, help_text="Omit to refund the rest.")


class RefundSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    status = serializers.CharField()
    amount_minor = serializers.IntegerField()
    failure_reason = serializers.CharField()


class MethodQuerySerializer(MoneyField):
    pass


class DefaultMethodSerializer(serializers.Serializer):
    provider = serializers.ChoiceField(choices=Provider.choices)
    method = column_text(CustomerDefaultMethod, "method")

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        if not PaymentMethod.objects.filter(enabled=True, **attrs).exists():
            raise serializers.ValidationError("no such enabled payment method")
        return attrs


_ERROR_TEXT = {
    404: "No default payment method chosen yet.",
    409: "The payment's state does not allow this (e.g. a refund of a payment that has not succeeded), or the "
    "same Idempotency-Key is in flight.",
    429: "A spend limit is reached; see Retry-After and the details for when it resets.",
    503: "No payment method is usable right now (a provider is down): nothing was charged; try again later.",
}


def _errors(*codes: int) -> dict[int, OpenApiResponse]:
    return error_responses(_ERROR_TEXT, *codes)


def _own_payment(request: Request, reference: str) -> PaymentRow:
    """The caller's own payment, or any one for staff who may view payments; else 404 (never 403)."""
    user = request.user
    may_view_all = user.is_staff and user.has_perm("providers.view_payment")
    payments = PaymentRow.objects.all() if may_view_all else PaymentRow.objects.filter(user=user)
    payment = payments.filter(reference=reference).first()
    if payment is None:
        raise NotFound(f"payment {reference} does not exist", details={"payment": reference})
    return payment


class PaymentCreateView(IdempotentMixin, APIView):
    @extend_schema(
        request=PaymentCreateSerializer,
        responses={201: PaymentSerializer, **_errors(429, 503)},
        parameters=[IDEMPOTENCY_KEY_HEADER],
    )
    def post(self, request: Request) -> Response:
        body = PaymentCreateSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        data = body.validated_data
        payment = payment_initiate(
            user=request.user,
            amount=data["money"],
            client_key=request.headers["Idempotency-Key"],
            explicit=_choice(data.get("provider"), data.get("method")),
            preferred=_choice(data.get("preferred_provider"), data.get("preferred_method")),
            payment_method_token=data["payment_method_token"],
        )
        return Response(PaymentSerializer(payment).data, status=status.HTTP_201_CREATED)


class PaymentDetailView(APIView):
    @extend_schema(
        responses={200: PaymentSerializer},
        parameters=[
            OpenApiParameter("sync", bool, description="Ask the provider first (unknown or waiting payments).")
        ],
    )
    def get(self, request: Request, reference: str) -> Response:
        payment = _own_payment(request, reference)
        if request.query_params.get("sync") in {"1", "true"}:
            payment = payment_sync(reference=payment.reference)
        return Response(PaymentSerializer(payment).data)


class RefundCreateView(IdempotentMixin, APIView):
    @extend_schema(
        request=RefundCreateSerializer,
        responses={201: RefundSerializer, **_errors(409, 503)},
        parameters=[IDEMPOTENCY_KEY_HEADER],
    )
    def post(self, request: Request, reference: str) -> Response:
        payment = _own_payment(request, reference)  # refund_request names the permission a reader lacks (403)
        body = RefundCreateSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        minor = body.validated_data.get("amount_minor")
        refund = refund_request(
            reference=payment.reference,
            amount=None if minor is None else Money(minor, payment.currency),
            client_key=request.headers["Idempotency-Key"],
            actor=request.user,
        )
        return Response(RefundSerializer(refund).data, status=status.HTTP_201_CREATED)


class MethodsView(APIView):
    @extend_schema(parameters=[MethodQuerySerializer], responses={200: dict})
    def get(self, request: Request) -> Response:
        query = MethodQuerySerializer(data=request.query_params)
        query.is_valid(raise_exception=True)
        route = route_payment(amount=query.validated_data["money"], user=request.user)
        return Response(
            {
                "available": [candidate.__dict__ for candidate in route.candidates],
                "unavailable": [skip.__dict__ for skip in route.skipped],
            }
        )


class DefaultMethodView(APIView):
    @extend_schema(responses={200: DefaultMethodSerializer, **_errors(404)})
    def get(self, request: Request) -> Response:
        default = CustomerDefaultMethod.objects.filter(user=request.user).first()
        if default is None:
            raise NotFound("no default payment method set", action_required="Choose one with PUT.")
        return Response(DefaultMethodSerializer(default).data)

    @extend_schema(request=DefaultMethodSerializer, responses={200: DefaultMethodSerializer})
    def put(self, request: Request) -> Response:
        body = DefaultMethodSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        CustomerDefaultMethod.objects.update_or_create(user=request.user, defaults=body.validated_data)
        return Response(body.validated_data)


urlpatterns = [
    path("", PaymentCreateView.as_view(), name="payment-create"),
    path("methods/", MethodsView.as_view(), name="payment-methods"),
    path("default-method/", DefaultMethodView.as_view(), name="payment-default-method"),
    path("<str:reference>/", PaymentDetailView.as_view(), name="payment-detail"),
    path("<str:reference>/refunds/", RefundCreateView.as_view(), name="payment-refunds"),
]
