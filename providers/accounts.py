"""The chart of accounts: every platform ledger account the code posts to, named in one place.

Each role has one code pattern; services ask for the roles they post to (`chart_accounts`) and get the
codes back, the accounts being made on first use. Provider roles take the provider's name:
`provider:{provider}:clearing:{currency}` mirrors the money we hold at the provider (the daily
reconciliation compares it with the provider's report); `platform:provider-fees:{provider}:{currency}`
is what the provider keeps. Platform accounts may go negative (they are hot, never locked) except the
ones that reserve money with holds (`winnings_payable`).
"""

from __future__ import annotations

from dataclasses import dataclass

from ledger.services import account_create, platform_accounts


@dataclass(frozen=True)
class ChartEntry:
    code: str  # a pattern over {provider} and {currency}
    type: str  # asset, liability, equity, revenue, expense
    name: str
    may_go_negative: bool = True


CHART: dict[str, ChartEntry] = {
    # money at and kept by a provider
    "clearing": ChartEntry("provider:{provider}:clearing:{currency}", "asset", "{provider} clearing ({currency})"),
    "fees": ChartEntry("platform:provider-fees:{provider}:{currency}", "expense", "{provider} fees ({currency})"),
    # customer payments (the orchestrator)
    "customer_payments": ChartEntry(
        "platform:customer-payments:{currency}", "liability", "Customer payments ({currency})"
    ),
    "payment_fee_revenue": ChartEntry(
        "platform:revenue:payment-fees:{currency}", "revenue", "Payment fee revenue ({currency})"
    ),
    # purchases of services
    "service_revenue": ChartEntry("platform:revenue:services:{currency}", "revenue", "Service revenue ({currency})"),
    # escrow deals
    "escrow_authorized": ChartEntry("escrow:authorized:{currency}", "asset", "Escrow card authorizations ({currency})"),
    "escrow_held": ChartEntry(
        "escrow:buyer-funds-held:{currency}", "liability", "Escrow buyer funds held ({currency})"
    ),
    "escrow_payable": ChartEntry("escrow:seller-payable:{currency}", "liability", "Escrow seller payable ({currency})"),
    "escrow_commission": ChartEntry(
        "platform:revenue:escrow-commission:{currency}", "revenue", "Escrow commission revenue ({currency})"
    ),
    # payouts to winners
    "prize_expense": ChartEntry("platform:prize-expense:{currency}", "expense", "Prize expense ({currency})"),
    "winnings_payable": ChartEntry(
        "payouts:winnings-payable:{currency}", "liability", "Winnings payable ({currency})", may_go_negative=False
    ),
}


def account_code(role: str, currency: str, provider: str = "") -> str:
    """The code of one role's account (it may not exist yet): for reads, reports and reconciliation."""
    entry = CHART[role]
    if "{provider}" in entry.code and not provider:
        raise ValueError(f"the {role} account belongs to a provider; name it")
    return entry.code.format(provider=provider, currency=currency)


def chart_accounts(currency: str, *roles: str, provider: str = "") -> dict[str, str]:
    """The accounts of `roles` in one currency (made on first use): role -> code."""
    hot = {}
    codes = {}
    for role in roles:
        entry = CHART[role]
        code = account_code(role, currency, provider)
        name = entry.name.format(provider=provider, currency=currency)
        if entry.may_go_negative:
            hot[role] = (code, entry.type, name)
        else:
            codes[role] = account_create(code=code, name=name, type=entry.type, currency=currency).code
    return {**codes, **platform_accounts(currency=currency, accounts=hot)}
