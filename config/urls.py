from django.contrib import admin
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

from monitoring.views_metrics import metrics_view
from providers.views import webhook_view

urlpatterns = [
    path("admin/providers/health/", include("providers.urls_admin")),
    path("admin/", include("monitoring.urls_admin")),  # the dashboard: the admin index and its polled sections
    path("admin/", admin.site.urls),
    path("api/schema/", SpectacularAPIView.as_view(), name="api-schema"),
    path("api/docs/", SpectacularSwaggerView.as_view(url_name="api-schema"), name="api-docs"),
    path("api/v1/ledger/", include("ledger.api.urls")),
    path("api/v1/payments/", include("providers.api")),
    path("api/v1/payouts/", include("payouts.api")),
    path("api/v1/spend-limits/", include("escrow.api.limits")),
    path("api/v1/escrow/", include("escrow.api.deal_urls")),
    path("api/v1/purchases/", include("escrow.api.purchases")),
    path("api/v1/analytics/", include("analytics.api")),
    path("", include("monitoring.urls_health")),  # /api/health: overall, database, redis, celery, payments
    path("metrics", metrics_view, name="metrics"),  # Prometheus; loopback, METRICS_ALLOWED_IPS or METRICS_TOKEN
    path("webhooks/<str:provider>/", webhook_view, name="webhook"),
]

handler400 = "core.api.bad_request"
handler404 = "core.api.not_found"
