"""The ledger accounts every provider movement touches, named in one place.

`provider:{provider}:clearing:{currency}` mirrors the money we hold at the provider (the daily
reconciliation compares it with the provider's report); `platform:provider-fees:{provider}:{currency}`
is what the provider keeps.
"""

from __future__ import annotations

from ledger.services import PlatformAccount


def provider_accounts(provider: str, currency: str) -> dict[str, PlatformAccount]:
    """The `clearing` and `fees` accounts of a provider and currency, for `ledger.services.platform_accounts`."""
    return {
        "clearing": (f"provider:{provider}:clearing:{currency}", "asset", f"{provider} clearing ({currency})"),
        "fees": (f"platform:provider-fees:{provider}:{currency}", "expense", f"{provider} fees ({currency})"),
    }
