"""Where each provider client sends its requests."""

from django.conf import settings

_LIVE_BASES = {
    "stripe": "STRIPE_API_BASE",
    "paypal": "PAYPAL_API_BASE",
    "paymongo": "PAYMONGO_API_BASE",
    "maya": "MAYA_API_BASE",
}


def api_base(provider: str) -> str:
    """The provider's API root; in sandbox mode the sandbox's prefix for that provider."""
    if settings.PROVIDER_MODE == "sandbox":
        return f"{settings.SANDBOX_URL.rstrip('/')}/{provider}"
    return str(getattr(settings, _LIVE_BASES[provider]))
