"""The dashboard, mounted at admin/ before admin.site.urls: its "" is the admin index (admin:index resolves to
the same path), its sections are polled at admin/dashboard/<name>/."""

from django.contrib import admin
from django.urls import path

from monitoring.admin_views import dashboard_index_view, dashboard_section_view

app_name = "dashboard"

urlpatterns = [
    # admin_view: active staff only (others go to the admin login), never cached.
    path("", admin.site.admin_view(dashboard_index_view), name="index"),
    path("dashboard/<slug:name>/", dashboard_section_view, name="section"),
]
