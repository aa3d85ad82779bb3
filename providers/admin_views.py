"""The provider health page in the admin: breaker state and availability per provider, and the reset action."""

from __future__ import annotations

from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import redirect
from django.template.response import TemplateResponse
from django.views.decorators.http import require_GET, require_POST

from core.errors import AppError
from providers.health import RESET_PERMISSION, VIEW_PERMISSION, breaker_reset, min_success_rate, provider_health


def _require_viewer(request: HttpRequest) -> None:
    if not request.user.has_perm(VIEW_PERMISSION):
        raise PermissionDenied


@require_GET
def provider_health_view(request: HttpRequest) -> HttpResponse:
    _require_viewer(request)
    context = {
        **admin.site.each_context(request),
        "title": "Provider health",
        "providers": provider_health(),
        "threshold_percent": min_success_rate() * 100,
        "can_reset": request.user.has_perm(RESET_PERMISSION),
    }
    return TemplateResponse(request, "admin/providers/health.html", context)


@require_POST
def breaker_reset_view(request: HttpRequest, provider: str) -> HttpResponseRedirect:
    _require_viewer(request)
    try:
        before = breaker_reset(provider=provider, actor=request.user)
    except AppError as error:
        messages.error(request, f"{error.user_message} {error.action_required}")
    else:
        messages.success(request, f"The {provider} circuit breaker was reset (it was {before.state.value}).")
    return redirect("providers_admin:health")
