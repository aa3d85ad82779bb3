"""/api/health and its parts (monitoring.views_health), included by config.urls at the root."""

from django.urls import path

from monitoring.views_health import health_view

urlpatterns = [
    path("api/health", health_view("overall").as_view(), name="health"),
    *(path(f"api/health/{check}", health_view(check).as_view(), name=f"health-{check}")
      for check in ("database", "redis", "celery", "payments")),
]  # fmt: skip
