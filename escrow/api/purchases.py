"""Purchases API (/api/v1/purchases/): thin views over escrow.purchases.

Client-app users buy services, see and cancel their own purchases (404 for anyone else's). The service
back end (permission escrow.deliver_purchase) reports delivery; finance staff (escrow.refund_purchase)
refund. Every POST needs an Idempotency-Key (Stripe semantics); creating a purchase also keeps the key on
the purchase itself, so the same key can never buy twice. Amounts are integer minor units plus currency.
"""

from __future__ import annotations

from typing import Any

from django.db.models import QuerySet
from django.urls import path
from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import generics, serializers, status
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
from core.money import Money
from escrow.api.catalogue import ServiceCatalogueView
from escrow.models import PurchasableService, Purchase, PurchaseRefund
from escrow.purchases import purchase_cancel, purchase_create, purchase_refund, purchase_report_delivery

app_name = "purchases-api"

_ERROR_TEXT = {
    400: "Invalid request, or no Idempotency-Key.",
    401: "Not authenticated.",
    403: "Missing the permission named in the details (or reporting the delivery of one's own purchase).",
    404: "No such purchase among yours.",
    409: "Conflicts with the purchase's current state, or the same Idempotency-Key is in flight.",
    422: "Idempotency-Key reused with a different request.",
    429: "Over a spending limit; see Retry-After and resets_at in the details.",
}


def _errors(*codes: int) -> dict[int, OpenApiResponse]:
    return error_responses(_ERROR_TEXT, *codes)


# --- serializers ---------------------------------------------------------------------------------


class PurchaseCreateSerializer(serializers.Serializer):
    service = column_text(
        PurchasableService, "code", serializers.SlugField, help_text="Catalogue code, e.g. phone-verification."
    )
    currency = CurrencyField()
    amount_minor = MinorUnitsField(
        min_value=1, required=False, help_text="The price shown to the buyer; must equal the catalogue price."
    )
    payment_method = column_text(Purchase, "payment_method", help_text="A Stripe payment method, e.g. pm_...")


class PurchaseRefundSerializer(serializers.ModelSerializer):
    class Meta:
        model = PurchaseRefund
        fields = ("id", "amount_minor", "status", "provider_reference", "reason", "failure_reason", "created_at")
        read_only_fields = fields


class PurchaseSerializer(serializers.ModelSerializer):
    service = serializers.SlugRelatedField(slug_field="code", read_only=True)
    refunds = PurchaseRefundSerializer(many=True, read_only=True)

    class Meta:
        model = Purchase
        fields = (
            "id", "service", "status", "outcome", "outcome_detail", "amount_minor", "currency", "captured_minor",
            "refunded_minor", "payment_intent_id", "deliver_by", "failure_reason", "created_at", "updated_at",
            "refunds",
        )  # fmt: skip
        read_only_fields = fields


class PurchaseDeliverySerializer(serializers.Serializer):
    outcome = serializers.ChoiceField(choices=[("delivered", "delivered"), ("failed", "failed")])
    detail = column_text(Purchase, "outcome_detail", required=False, default="", allow_blank=True)


class PurchaseRefundCreateSerializer(serializers.Serializer):
    amount_minor = MinorUnitsField(min_value=1, required=False, help_text="Omit to refund the rest.")
    reason = column_text(PurchaseRefund, "reason", required=False, default="", allow_blank=True)


# --- views ---------------------------------------------------------------------------------------


def _visible(request: Request) -> QuerySet[Purchase]:
    purchases = Purchase.objects.select_related("service").prefetch_related("refunds")
    if request.user.is_staff and request.user.has_perm("escrow.view_purchase"):
        return purchases
    return purchases.filter(buyer=request.user)


def _own(request: Request, purchase_id: int) -> Purchase:
    purchase = _visible(request).filter(pk=purchase_id).first()
    if purchase is None:
        raise NotFound(f"purchase {purchase_id} does not exist", details={"purchase": purchase_id})
    return purchase


def _body(purchase: Purchase) -> dict[str, Any]:
    return PurchaseSerializer(Purchase.objects.prefetch_related("refunds").get(pk=purchase.pk)).data


class PurchaseListCreateView(IdempotentMixin, generics.ListAPIView):
    serializer_class = PurchaseSerializer

    def get_queryset(self) -> QuerySet[Purchase]:
        if getattr(self, "swagger_fake_view", False):  # schema generation
            return Purchase.objects.none()
        return Purchase.objects.filter(buyer=self.request.user).select_related("service").prefetch_related("refunds")

    @extend_schema(
        tags=["purchases"], summary="My purchases, newest first", responses={200: PurchaseSerializer(many=True)}
    )
    def get(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        return super().get(request, *args, **kwargs)

    @extend_schema(
        tags=["purchases"],
        summary="Buy a service: the card is authorized now and charged when the service is delivered",
        request=PurchaseCreateSerializer,
        parameters=[IDEMPOTENCY_KEY_HEADER],
        responses={201: PurchaseSerializer, **_errors(400, 401, 409, 422, 429)},
    )
    def post(self, request: Request) -> Response:
        body = PurchaseCreateSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        data = body.validated_data
        purchase = purchase_create(
            buyer=request.user,
            service_code=data["service"],
            currency=data["currency"],
            amount_minor=data.get("amount_minor"),
            payment_method=data["payment_method"],
            client_key=request.headers["Idempotency-Key"],
        )
        return Response(_body(purchase), status=status.HTTP_201_CREATED)


class PurchaseDetailView(APIView):
    @extend_schema(
        tags=["purchases"], summary="One of my purchases", responses={200: PurchaseSerializer, **_errors(401, 404)}
    )
    def get(self, request: Request, purchase_id: int) -> Response:
        return Response(PurchaseSerializer(_own(request, purchase_id)).data)


class PurchaseCancelView(IdempotentMixin, APIView):
    @extend_schema(
        tags=["purchases"],
        summary="Cancel my purchase before delivery: the authorization is voided",
        request=None,
        parameters=[IDEMPOTENCY_KEY_HEADER],
        responses={200: PurchaseSerializer, **_errors(400, 401, 404, 409, 422)},
    )
    def post(self, request: Request, purchase_id: int) -> Response:
        return Response(_body(purchase_cancel(purchase_id=purchase_id, actor=request.user)))


class PurchaseDeliveryView(IdempotentMixin, APIView):
    @extend_schema(
        tags=["purchases"],
        summary="Service back end: report delivery (captures) or failure (voids or refunds)",
        request=PurchaseDeliverySerializer,
        parameters=[IDEMPOTENCY_KEY_HEADER],
        responses={200: PurchaseSerializer, **_errors(400, 401, 403, 404, 409, 422)},
    )
    def post(self, request: Request, purchase_id: int) -> Response:
        body = PurchaseDeliverySerializer(data=request.data)
        body.is_valid(raise_exception=True)
        purchase = purchase_report_delivery(
            purchase_id=purchase_id,
            actor=request.user,
            outcome=body.validated_data["outcome"],
            detail=body.validated_data["detail"],
        )
        return Response(_body(purchase))


class PurchaseRefundView(IdempotentMixin, APIView):
    @extend_schema(
        tags=["purchases"],
        summary="Finance staff: refund part (or the rest) of a captured purchase",
        request=PurchaseRefundCreateSerializer,
        parameters=[IDEMPOTENCY_KEY_HEADER],
        responses={201: PurchaseRefundSerializer, **_errors(400, 401, 403, 404, 409, 422)},
    )
    def post(self, request: Request, purchase_id: int) -> Response:
        body = PurchaseRefundCreateSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        purchase = _own(request, purchase_id)  # another's purchase is 404, as if it did not exist (never 403)
        minor = body.validated_data.get("amount_minor")
        refund = purchase_refund(
            purchase_id=purchase.pk,
            amount=None if minor is None else Money(minor, purchase.currency),
            actor=request.user,
            client_key=request.headers["Idempotency-Key"],
            reason=body.validated_data["reason"],
        )
        return Response(PurchaseRefundSerializer(refund).data, status=status.HTTP_201_CREATED)


urlpatterns = [
    path("", PurchaseListCreateView.as_view(), name="purchase-list"),
    path("services/", ServiceCatalogueView.as_view(), name="service-list"),
    path("<int:purchase_id>/", PurchaseDetailView.as_view(), name="purchase-detail"),
    path("<int:purchase_id>/cancel/", PurchaseCancelView.as_view(), name="purchase-cancel"),
    path("<int:purchase_id>/delivery/", PurchaseDeliveryView.as_view(), name="purchase-delivery"),
    path("<int:purchase_id>/refunds/", PurchaseRefundView.as_view(), name="purchase-refunds"),
]
