"""Ledger API: accounts and statements for their owners (all for finance staff), and staff reversals."""

from __future__ import annotations

from django.db.models import QuerySet
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import exceptions as drf_exceptions
from rest_framework import generics, status
from rest_framework.permissions import BasePermission, IsAuthenticated
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from core.api import ErrorSerializer, IdempotentMixin
from core.errors import NotFound, PermissionDenied
from ledger.api.serializers import (
    AccountSerializer,
    StatementQuerySerializer,
    StatementSerializer,
    TransactionReverseSerializer,
    TransactionSerializer,
)
from ledger.models import Account
from ledger.selectors import account_statement, accounts_visible_to, transaction_with_entries
from ledger.services import transaction_reverse

REVERSE_PERMISSION = "ledger.reverse_transaction"

_ERRORS = {
    400: OpenApiResponse(ErrorSerializer, description="Invalid request."),
    401: OpenApiResponse(ErrorSerializer, description="Not authenticated."),
    403: OpenApiResponse(ErrorSerializer, description="Missing permission."),
    404: OpenApiResponse(ErrorSerializer, description="Not found, or not visible to this user."),
}
_CODE_PARAMETER = OpenApiParameter("code", str, OpenApiParameter.PATH, description="Account code.")


class _VisibleAccountMixin(generics.GenericAPIView):
    serializer_class = AccountSerializer

    def get_queryset(self) -> QuerySet[Account]:
        if getattr(self, "swagger_fake_view", False):  # schema generation
            return Account.objects.none()
        return accounts_visible_to(self.request.user)

    def get_object(self) -> Account:
        code = self.kwargs["code"]
        account = self.get_queryset().filter(code=code).first()
        if account is None:
            raise NotFound(f"ledger account {code!r} does not exist or is not visible", details={"account": code})
        return account


@extend_schema(
    tags=["ledger"],
    summary="List accounts",
    description="Finance staff with ledger.view_account see every account; other users only their own.",
    responses={200: AccountSerializer(many=True), 401: _ERRORS[401]},
)
class AccountListView(_VisibleAccountMixin, generics.ListAPIView):
    pass


@extend_schema(
    tags=["ledger"],
    summary="Get one account with its balances",
    parameters=[_CODE_PARAMETER],
    responses={200: AccountSerializer, 401: _ERRORS[401], 404: _ERRORS[404]},
)
class AccountDetailView(_VisibleAccountMixin, generics.RetrieveAPIView):
    pass


class AccountStatementView(_VisibleAccountMixin):
    @extend_schema(
        tags=["ledger"],
        summary="Account statement",
        description="Opening balance at `since`, every entry recorded in (since, until], closing balance.",
        parameters=[_CODE_PARAMETER, StatementQuerySerializer],
        responses={200: StatementSerializer, 400: _ERRORS[400], 401: _ERRORS[401], 404: _ERRORS[404]},
    )
    def get(self, request: Request, code: str) -> Response:
        account = self.get_object()
        query = StatementQuerySerializer(data=request.query_params)
        query.is_valid(raise_exception=True)
        statement = account_statement(account, **query.validated_data)
        return Response(StatementSerializer(statement).data)


class CanReverseTransactions(BasePermission):
    def has_permission(self, request: Request, view: APIView) -> bool:
        user = request.user
        return bool(user.is_authenticated and user.is_staff and user.has_perm(REVERSE_PERMISSION))


class TransactionReverseView(IdempotentMixin, APIView):
    permission_classes = (IsAuthenticated, CanReverseTransactions)

    def permission_denied(self, request: Request, message: str | None = None, code: str | None = None) -> None:
        if request.authenticators and not request.successful_authenticator:
            raise drf_exceptions.NotAuthenticated()
        raise PermissionDenied(f"staff with {REVERSE_PERMISSION} required", details={"permission": REVERSE_PERMISSION})

    @extend_schema(
        tags=["ledger"],
        summary="Reverse a transaction",
        description=(
            "Posts the mirror image of a transaction, once. Finance staff with ledger.reverse_transaction only. "
            "Needs an Idempotency-Key: a repeat with the same key and body replays the first response."
        ),
        request=TransactionReverseSerializer,
        parameters=[
            OpenApiParameter(
                "Idempotency-Key",
                str,
                OpenApiParameter.HEADER,
                required=True,
                description="Unique per request; a repeat within 24 h replays the first response.",
            ),
            OpenApiParameter(
                "Idempotent-Replayed",
                str,
                OpenApiParameter.HEADER,
                response=[201],
                description='"true" when this is the stored response of an earlier request with the same key.',
            ),
        ],
        responses={
            201: TransactionSerializer,
            **_ERRORS,
            409: OpenApiResponse(ErrorSerializer, description="Already reversed, or the same key is in flight."),
            422: OpenApiResponse(ErrorSerializer, description="Idempotency-Key reused with a different body."),
            503: OpenApiResponse(ErrorSerializer, description="Ledger busy; retry with the same Idempotency-Key."),
        },
    )
    def post(self, request: Request, transaction_id: int) -> Response:
        body = TransactionReverseSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        reversal = transaction_reverse(
            transaction_id=transaction_id, reason=body.validated_data["reason"], actor=request.user
        )
        return Response(
            TransactionSerializer(transaction_with_entries(reversal.pk)).data, status=status.HTTP_201_CREATED
        )
