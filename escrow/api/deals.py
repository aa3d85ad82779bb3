"""Escrow deals API (/api/v1/escrow/deals/): buyers open deals and release them; sellers cancel; staff act too.

Thin views over escrow.deals. A user sees only deals they buy or sell (finance staff with
escrow.view_escrowdeal see all); anything else is 404. Every POST needs an Idempotency-Key (Stripe
semantics); creating a deal also uses it as the deal's client key, so a repeat can never hold money twice.
Amounts are integer minor units plus an ISO 4217 currency; floats and strings are refused.
"""

from __future__ import annotations

from typing import Any

from django.db.models import Q, QuerySet
from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import generics, serializers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from core.api import (
    IDEMPOTENCY_KEY_HEADER,
    BoundedDateTimeField,
    CurrencyField,
    IdempotentMixin,
    MinorUnitsField,
    column_text,
    error_responses,
)
from core.errors import NotFound
from escrow.deals import deal_cancel, deal_create, deal_release, deal_release_approve, money_of
from escrow.models import EscrowDeal, SellerAccount

_ERROR_TEXT = {
    400: "Invalid request, or no Idempotency-Key.",
    401: "Not authenticated.",
    403: "Not allowed to do this to the deal (the permission is named in the details), or maker-checker.",
    404: "No such deal among yours.",
    409: "The deal is not in a state that allows this, or the same Idempotency-Key is in flight.",
    422: "Idempotency-Key reused with a different request.",
    423: "Someone is already processing this deal (holder and expiry in the details).",
    429: "Over a spending limit; see Retry-After and the details.",
    503: "Stripe is unavailable; nothing moved.",
}


def _errors(*codes: int) -> dict[int, OpenApiResponse]:
    return error_responses(_ERROR_TEXT, *codes)


class DealCreateSerializer(serializers.Serializer):
    seller_account = column_text(
        SellerAccount,
        "stripe_account_id",
        serializers.RegexField,
        regex=r"^acct_[A-Za-z0-9]+$",
        help_text="The seller's connected account id.",
    )
    amount_minor = MinorUnitsField(min_value=1, help_text="What the buyer pays, in minor units.")
    currency = CurrencyField()
    deadline = BoundedDateTimeField(
        help_text="When the deal should complete (at most ESCROW_DEADLINE_MAX_DAYS ahead); the timeout policy "
        "applies after."
    )
    timeout_policy = serializers.ChoiceField(choices=EscrowDeal.TimeoutPolicy.choices)
    payment_method = column_text(EscrowDeal, "payment_method", help_text="The buyer's Stripe payment method, pm_...")


class DealCancelSerializer(serializers.Serializer):
    reason = serializers.CharField(max_length=255, required=False, default="")


class DealSerializer(serializers.ModelSerializer):
    seller_account = serializers.CharField(source="seller_account.stripe_account_id")
    seller_net_minor = serializers.IntegerField(help_text="What the seller receives: amount minus commission.")

    class Meta:
        model = EscrowDeal
        fields = (
            "id", "status", "buyer", "seller_account", "amount_minor", "currency", "commission_bps",
            "commission_minor", "seller_net_minor", "deadline", "timeout_policy", "hold_mode", "transfer_group",
            "payment_intent_id", "transfer_id", "refund_id", "reversed_minor", "failure_reason", "transfer_attempts",
            "next_transfer_at", "authorized_at", "captured_at", "released_at", "transferred_at", "refunded_at",
            "created_at", "updated_at",
        )  # fmt: skip
        read_only_fields = fields


def deals_visible_to(user: Any) -> QuerySet[EscrowDeal]:
    deals = EscrowDeal.objects.select_related("seller_account").order_by("-pk")
    if user.is_staff and user.has_perm("escrow.view_escrowdeal"):
        return deals
    return deals.filter(Q(buyer=user) | Q(seller_account__user=user))


def _visible_deal(request: Request, deal_id: int) -> EscrowDeal:
    deal = deals_visible_to(request.user).filter(pk=deal_id).first()
    if deal is None:
        raise NotFound(f"escrow deal {deal_id} not found for {request.user.get_username()}")
    return deal


def _deal_body(deal: EscrowDeal) -> dict[str, Any]:
    return DealSerializer(EscrowDeal.objects.select_related("seller_account").get(pk=deal.pk)).data


@extend_schema(tags=["escrow"])
class DealListCreateView(IdempotentMixin, generics.ListAPIView):
    serializer_class = DealSerializer

    def get_queryset(self) -> QuerySet[EscrowDeal]:
        if getattr(self, "swagger_fake_view", False):  # schema generation
            return EscrowDeal.objects.none()
        return deals_visible_to(self.request.user)

    @extend_schema(summary="My escrow deals, as buyer or seller", responses={200: DealSerializer(many=True)})
    def get(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        return super().get(request, *args, **kwargs)

    @extend_schema(
        summary="Open a deal: hold the buyer's money until release, cancel or timeout",
        request=DealCreateSerializer,
        parameters=[IDEMPOTENCY_KEY_HEADER],
        responses={201: DealSerializer, **_errors(400, 401, 404, 409, 422, 429, 503)},
    )
    def post(self, request: Request) -> Response:
        given = DealCreateSerializer(data=request.data)
        given.is_valid(raise_exception=True)
        data = given.validated_data
        deal = deal_create(
            buyer=request.user,
            seller_account=data["seller_account"],
            amount=money_of(amount_minor=data["amount_minor"], currency=data["currency"]),
            deadline=data["deadline"],
            timeout_policy=data["timeout_policy"],
            payment_method=data["payment_method"],
            client_key=request.headers["Idempotency-Key"],
        )
        return Response(_deal_body(deal), status=201)


class DealDetailView(APIView):
    @extend_schema(tags=["escrow"], summary="A deal's status", responses={200: DealSerializer, **_errors(401, 404)})
    def get(self, request: Request, deal_id: int) -> Response:
        return Response(_deal_body(_visible_deal(request, deal_id)))


class DealReleaseView(IdempotentMixin, APIView):
    @extend_schema(
        tags=["escrow"],
        summary="Release the money to the seller (the buyer, or finance staff); large amounts wait for approval",
        request=None,
        parameters=[IDEMPOTENCY_KEY_HEADER],
        responses={200: DealSerializer, **_errors(400, 401, 403, 404, 409, 422, 423, 503)},
    )
    def post(self, request: Request, deal_id: int) -> Response:
        deal = deal_release(deal_id=_visible_deal(request, deal_id).pk, actor=request.user)
        return Response(_deal_body(deal))


class DealCancelView(IdempotentMixin, APIView):
    @extend_schema(
        tags=["escrow"],
        summary="Cancel before release and give the buyer the money back (the seller, or finance staff)",
        request=DealCancelSerializer,
        parameters=[IDEMPOTENCY_KEY_HEADER],
        responses={200: DealSerializer, **_errors(400, 401, 403, 404, 409, 422, 423, 503)},
    )
    def post(self, request: Request, deal_id: int) -> Response:
        given = DealCancelSerializer(data=request.data)
        given.is_valid(raise_exception=True)
        deal = _visible_deal(request, deal_id)
        deal = deal_cancel(deal_id=deal.pk, actor=request.user, reason=given.validated_data["reason"])
        return Response(_deal_body(deal))


class DealApproveView(IdempotentMixin, APIView):
    @extend_schema(
        tags=["escrow"],
        summary="Approve a large release (finance approver, not the one who asked for it)",
        request=None,
        parameters=[IDEMPOTENCY_KEY_HEADER],
        responses={200: DealSerializer, **_errors(400, 401, 403, 404, 409, 422, 423, 503)},
    )
    def post(self, request: Request, deal_id: int) -> Response:
        deal = deal_release_approve(deal_id=_visible_deal(request, deal_id).pk, approver=request.user)
        return Response(_deal_body(deal))
