"""The provider health page, mounted at admin/providers/health/ (before admin/, whose catch-all would take it)."""

from django.contrib import admin
from django.urls import path

from providers.admin_views import breaker_reset_view, provider_health_view

app_name = "providers_admin"

# admin_view: active staff only (others go to the admin login), CSRF protected, never cached.
urlpatterns = [
    path("", admin.site.admin_view(provider_health_view), name="health"),
    path("<str:provider>/reset/", admin.site.admin_view(breaker_reset_view), name="breaker_reset"),
]
