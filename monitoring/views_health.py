"""GET /api/health and /api/health/<database|redis|celery|payments>: the checks of monitoring.health.

Everyone gets `{"status": ...}`; active staff (session or API token) also get the reasons and details. 200
for HEALTHY and DEGRADED, 503 for UNHEALTHY; never cached. The rules are in monitoring.health.
"""

from __future__ import annotations

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework.permissions import AllowAny
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from monitoring.health import CHECKS

DESCRIPTIONS = {
    "overall": "Every check below. 503 only when the database is unreachable; any other check that is not "
    "HEALTHY makes it DEGRADED.",
    "database": "The database answers `SELECT 1`; 503 when it does not.",
    "redis": "Redis (Celery's broker, the shared cache, circuit breakers) answers PING within 0.5 s; 503 when "
    "it does not. HEALTHY without REDIS_URL (the embedded mode).",
    "celery": "Worker and beat heartbeats: 503 without a live worker or beat, DEGRADED when the every-minute "
    "heartbeat task has not run. HEALTHY in eager mode (the embedded mode).",
    "payments": "Circuit breakers and recent availability per provider: DEGRADED while a circuit is open or "
    "half-open or a method fails often, 503 when every provider's circuit is open.",
}


class HealthView(APIView):
    permission_classes = [AllowAny]
    check = "overall"

    def get(self, request: Request) -> Response:
        result = CHECKS[self.check]()
        staff = bool(request.user and request.user.is_active and request.user.is_staff)
        response = Response(result.body(staff=staff), status=result.http_status)
        response["Cache-Control"] = "no-store"
        return response


def health_view(check: str) -> type[HealthView]:
    """The view of one check, with its own schema entry."""
    schema = extend_schema(
        operation_id=f"health_{check}",
        summary=f"Health: {check}",
        description=f"{DESCRIPTIONS[check]} `status` (HEALTHY, DEGRADED or UNHEALTHY) for everyone; `reasons` "
        "and details for staff only.",
        responses={
            200: OpenApiResponse(OpenApiTypes.OBJECT, description="HEALTHY or DEGRADED."),
            503: OpenApiResponse(OpenApiTypes.OBJECT, description="UNHEALTHY."),
        },
    )

    def get(self: HealthView, request: Request) -> Response:  # a function of its own: the schema is set on it
        return HealthView.get(self, request)

    return type(f"{check.title()}HealthView", (HealthView,), {"check": check, "get": schema(get)})
