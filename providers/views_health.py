"""GET /api/health/payments: HEALTHY, DEGRADED or UNHEALTHY; per-provider details for staff only."""

from __future__ import annotations

from dataclasses import asdict

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework.permissions import AllowAny
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from providers.health import HealthStatus, overall_status, provider_health


class PaymentsHealthView(APIView):
    permission_classes = [AllowAny]

    @extend_schema(
        summary="Payment providers health",
        description="`status` for everyone; `providers` (breaker and availability per provider) for staff only.",
        responses={
            200: OpenApiResponse(OpenApiTypes.OBJECT, description="HEALTHY or DEGRADED."),
            503: OpenApiResponse(OpenApiTypes.OBJECT, description="UNHEALTHY: a provider's circuit is open."),
        },
    )
    def get(self, request: Request) -> Response:
        providers = provider_health()
        status = overall_status(providers)
        body: dict[str, object] = {"status": status}
        if request.user.is_active and request.user.is_staff:
            body["providers"] = [asdict(provider) for provider in providers]
        response = Response(body, status=503 if status == HealthStatus.UNHEALTHY else 200)
        response["Cache-Control"] = "no-store"
        return response
