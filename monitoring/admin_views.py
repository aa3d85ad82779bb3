"""The status dashboard: the admin index (/admin/) shows it above the app list, so staff land on it at sign-in.

Each section is a small template (templates/admin/dashboard/_<name>.html) filled by one selector of
monitoring.dashboard (or monitoring.charts) and served again on its own at /admin/dashboard/<name>/, which the
page polls with htmx (every DASHBOARD_POLL_SECONDS; the charts every DASHBOARD_CHART_POLL_SECONDS) and swaps in
without reloading. A section is shown to staff holding any of its view permissions (Finance viewer and up);
a staff user with none of them gets Django's plain index. Buttons post to the existing admin actions, and only
appear for users holding the action's permission (monitoring.dashboard.ACTIONS).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.contrib import admin
from django.contrib.auth.views import redirect_to_login
from django.core.exceptions import PermissionDenied
from django.http import Http404, HttpRequest, HttpResponse
from django.template.response import TemplateResponse
from django.urls import reverse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET

from monitoring import dashboard
from monitoring.charts import DAYS as CHART_DAYS
from monitoring.charts import dashboard_charts
from providers.health import VIEW_PERMISSION as PROVIDER_HEALTH_PERMISSION

Build = Callable[[dashboard.Can], dict[str, Any]]


@dataclass(frozen=True)
class Section:
    name: str
    title: str
    permissions: tuple[str, ...]  # any one of them shows the section
    build: Build
    slow: bool = False  # polled every DASHBOARD_CHART_POLL_SECONDS instead
    wide: bool = False  # takes the page's whole width

    @property
    def template(self) -> str:
        return f"admin/dashboard/_{self.name}.html"


def _rows(rows_and_more: tuple[list[Any], bool]) -> dict[str, Any]:
    rows, more = rows_and_more
    return {"rows": rows, "more": more}


def _failures(can: dashboard.Can) -> dict[str, Any]:
    return {
        "batches": dashboard.payout_failures(can=can) if can("payouts.view_payoutitem") else [],
        "deals": dashboard.transfer_failures(can=can) if can("escrow.view_escrowdeal") else [],
    }


def _charts(can: dashboard.Can) -> dict[str, Any]:
    charts, as_of = dashboard_charts(days=CHART_DAYS)
    return {"charts": charts, "as_of": as_of, "days": CHART_DAYS}


SECTIONS = [
    Section("alerts", "Alerts", ("core.view_alert",), lambda can: _rows(dashboard.recent_alerts(can=can)),
            wide=True),
    Section("batches", "Payout batches in flight", ("payouts.view_payoutbatch",),
            lambda can: {"rows": dashboard.batches_in_flight(can=can)}, wide=True),
    Section("movements", "Provider calls in flight or unknown", tuple(dashboard.MOVEMENT_DOMAINS.values()),
            lambda can: _rows(dashboard.movements_in_flight(can=can)), wide=True),
    Section("failures", "Failures to retry", ("payouts.view_payoutitem", "escrow.view_escrowdeal"), _failures,
            wide=True),
    Section("providers", "Providers", (PROVIDER_HEALTH_PERMISSION,),
            lambda can: {"cards": dashboard.provider_cards(can=can),
                         "health_url": reverse("providers_admin:health")}),
    Section("locks", "Processing locks", ("core.view_processinglock",),
            lambda can: _rows(dashboard.processing_locks(can=can))),
    Section("deadlines", "Escrow deadlines and card holds", ("escrow.view_escrowdeal", "escrow.view_purchase"),
            lambda can: {"rows": dashboard.deadlines(can=can)}),
    Section("reconciliation", "Open reconciliation issues", ("monitoring.view_reconciliationissue",),
            lambda can: _rows(dashboard.open_issues())),
    Section("charts", "Payments and payouts by provider", ("analytics.view_dailystatussummary",), _charts, slow=True,
            wide=True),
]  # fmt: skip
SECTIONS_BY_NAME = {section.name: section for section in SECTIONS}


def sections_for(user: Any) -> list[Section]:
    return [section for section in SECTIONS if any(user.has_perm(p) for p in section.permissions)]


def poll_seconds(section: Section) -> int:
    if section.slow:
        return int(getattr(settings, "DASHBOARD_CHART_POLL_SECONDS", 60))
    return int(getattr(settings, "DASHBOARD_POLL_SECONDS", 5))


def _context(request: HttpRequest, section: Section) -> dict[str, Any]:
    return {
        "section": section,
        "url": reverse("dashboard:section", args=[section.name]),
        "poll_seconds": poll_seconds(section),
        "data": section.build(request.user.has_perm),
    }


def dashboard_index_view(request: HttpRequest) -> HttpResponse:
    """The admin index with the dashboard above the app list (Django's own index for staff without a section)."""
    sections = sections_for(request.user)
    if not sections:
        return admin.site.index(request)
    extra = {"title": "Finance dashboard", "dashboard": [_context(request, section) for section in sections]}
    response = admin.site.index(request, extra_context=extra)
    response.template_name = "admin/dashboard/index.html"
    return response


def staff_fragment(view: Callable[..., HttpResponse]) -> Callable[..., HttpResponse]:
    """Like admin_view, for the polled fragments: a signed-out poll sends the whole page to the sign-in page
    (htmx follows HX-Redirect) instead of swapping the sign-in form into a section."""

    @never_cache
    @require_GET
    def inner(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        if not admin.site.has_permission(request):
            login = redirect_to_login(reverse("admin:index"), reverse("admin:login"))
            if request.headers.get("HX-Request"):
                return HttpResponse(status=204, headers={"HX-Redirect": login["Location"]})
            return login
        return view(request, *args, **kwargs)

    return inner


@staff_fragment
def dashboard_section_view(request: HttpRequest, name: str) -> HttpResponse:
    section = SECTIONS_BY_NAME.get(name)
    if section is None:
        raise Http404("no such dashboard section")
    if section not in sections_for(request.user):
        raise PermissionDenied
    return TemplateResponse(request, section.template, _context(request, section))
