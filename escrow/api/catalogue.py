"""The catalogue a client app buys from (GET /api/v1/purchases/services/): active services and their prices.

Read-only; staff create services and prices in the admin. Prices are integer minor units with their ISO 4217
currency; a purchase (POST /api/v1/purchases/) names a service's `code`, a `currency` it has a price in, and
may repeat the price as `amount_minor`.
"""

from __future__ import annotations

from typing import Any

from django.db.models import Prefetch, QuerySet
from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import generics, serializers
from rest_framework.request import Request
from rest_framework.response import Response

from core.api import error_responses
from escrow.models import PurchasableService, ServicePrice


class ServicePriceSerializer(serializers.ModelSerializer):
    class Meta:
        model = ServicePrice
        fields = ("currency", "amount_minor")
        read_only_fields = fields


class PurchasableServiceSerializer(serializers.ModelSerializer):
    prices = ServicePriceSerializer(many=True, read_only=True)
    delivery_timeout_seconds = serializers.SerializerMethodField(
        help_text="Not delivered within this: the authorization is voided and nothing is charged."
    )

    class Meta:
        model = PurchasableService
        fields = ("code", "name", "delivery_timeout_seconds", "prices")
        read_only_fields = fields

    def get_delivery_timeout_seconds(self, service: PurchasableService) -> int:
        return int(service.delivery_timeout.total_seconds())


def services_for_sale() -> QuerySet[PurchasableService]:
    prices = Prefetch("prices", queryset=ServicePrice.objects.order_by("currency"))
    return PurchasableService.objects.filter(active=True).prefetch_related(prices).order_by("code")


_ERROR_TEXT = {400: "A bad page parameter (limit, offset).", 401: "Not authenticated."}


def _errors() -> dict[int, OpenApiResponse]:
    return error_responses(_ERROR_TEXT, 400, 401)


class ServiceCatalogueView(generics.ListAPIView):
    serializer_class = PurchasableServiceSerializer

    def get_queryset(self) -> QuerySet[PurchasableService]:
        return services_for_sale()

    @extend_schema(
        tags=["purchases"],
        summary="Services for sale and their prices (minor units per currency)",
        responses={200: PurchasableServiceSerializer(many=True), **_errors()},
    )
    def get(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        return super().get(request, *args, **kwargs)
