"""django.contrib.admin's app config, named in INSTALLED_APPS in its place (its own module: core.apps may hold only
core's config)."""

from django.contrib.admin.apps import AdminConfig


class StaffAdminConfig(AdminConfig):
    """`admin.site` is core.staff_security.StaffAdminSite: a second factor when STAFF_2FA_REQUIRED is on."""

    default_site = "core.staff_security.StaffAdminSite"
