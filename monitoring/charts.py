"""The dashboard's charts: analytics figures (analytics.selectors, summary tables only) shaped for Chart.js.

Each chart is a plain dict the template embeds with json_script and monitoring/static/monitoring/dashboard.js
draws. Amounts stay integers in minor units until here, and leave as exact decimal strings in the currency's
major unit ("1234.50", Money.decimal_string), one chart per currency (never summed across currencies); rates
leave as percent strings with two decimals from integer basis points. The browser only plots and formats them.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

from analytics.selectors import (
    failure_reasons,
    refund_rate_by_provider_day,
    success_rate_by_provider_day,
    volume_by_provider_day,
)
from core.labels import provider_name, when
from core.money import Money

DAYS = 14
CURRENCIES_PER_KIND = 3  # amount charts per kind: the currencies with the most volume
REASON_CHARS = 48
PROVIDER_COLORS = {"stripe": "#635bff", "paypal": "#003087", "maya": "#00a651", "gcash": "#0a7cff"}
OTHER_COLORS = ("#8e24aa", "#f4511e", "#6d4c41", "#546e7a", "#c0ca33")
KINDS = (("payment", "Payments"), ("payout", "Payouts"))


@dataclass(frozen=True)
class Chart:
    id: str
    title: str
    spec: dict[str, Any]

    @property
    def data_id(self) -> str:
        return f"chart-data-{self.id}"

    @property
    def empty(self) -> bool:
        return not self.spec["datasets"]


def dashboard_charts(days: int = DAYS) -> tuple[list[Chart], str]:
    """Volume, success rate and failure reasons of payments and payouts, and the refund rate of payments, by
    provider and day; and when the newest figure was rolled up ("" when nothing has been yet)."""
    charts: list[Chart] = []
    newest: list[str] = []
    for kind, name in KINDS:
        volume = volume_by_provider_day(kind, days)
        rate = success_rate_by_provider_day(kind, days)
        reasons = failure_reasons(kind, days)
        newest += [figures["as_of"] for figures in (volume, rate, reasons) if figures["as_of"]]
        charts.append(_count_chart(kind, name, volume))
        charts += _amount_charts(kind, name, volume)
        charts.append(_rate_chart(f"{kind}-success", f"{name}: success rate", rate, "rate_bps"))
        charts.append(_reasons_chart(kind, name, reasons))
    refunds = refund_rate_by_provider_day(days)
    newest += [refunds["as_of"]] if refunds["as_of"] else []
    charts.append(
        _rate_chart("payment-refunds", "Payments: refund rate (refunded / paid that day)", refunds, "rate_bps")
    )
    return charts, _as_of(max(newest, default=""))


def _count_chart(kind: str, name: str, volume: dict[str, Any]) -> Chart:
    counts: dict[str, list[int]] = {}
    for line in volume["series"]:  # one line per provider and currency: counts add up across currencies
        per_day = counts.setdefault(line["provider"], [0] * len(volume["labels"]))
        counts[line["provider"]] = [a + b for a, b in zip(per_day, line["count"], strict=True)]
    datasets = [_dataset(provider_name(p), p, data) for p, data in sorted(counts.items())]
    return Chart(f"{kind}-count", f"{name}: how many per day", _spec("bar", volume["labels"], datasets, "count"))


def _amount_charts(kind: str, name: str, volume: dict[str, Any]) -> list[Chart]:
    totals: dict[str, int] = {}
    for line in volume["series"]:
        totals[line["currency"]] = totals.get(line["currency"], 0) + sum(line["amount_minor"])
    currencies = sorted(totals, key=lambda currency: (-totals[currency], currency))[:CURRENCIES_PER_KIND]
    charts = []
    for currency in currencies:
        datasets = [
            _dataset(provider_name(line["provider"]), line["provider"],
                     [Money(minor, currency).decimal_string() for minor in line["amount_minor"]])
            for line in volume["series"]
            if line["currency"] == currency
        ]  # fmt: skip
        spec = _spec("bar", volume["labels"], datasets, "money", currency=currency)
        charts.append(Chart(f"{kind}-amount-{currency.lower()}", f"{name}: amount per day in {currency}", spec))
    return charts


def _rate_chart(chart_id: str, title: str, figures: dict[str, Any], field: str) -> Chart:
    datasets = []
    for line in figures["series"]:
        label = provider_name(line["provider"]) + (f" {line['currency']}" if "currency" in line else "")
        datasets.append(_dataset(label, line["provider"], [_percent(bps) for bps in line[field]], fill=False))
    return Chart(chart_id, title, _spec("line", figures["labels"], datasets, "percent", stacked=False))


def _reasons_chart(kind: str, name: str, reasons: dict[str, Any]) -> Chart:
    labels = [
        reason if len(reason) <= REASON_CHARS else reason[: REASON_CHARS - 1] + "…" for reason in reasons["labels"]
    ]
    datasets = [_dataset(provider_name(line["provider"]), line["provider"], line["data"]) for line in reasons["series"]]
    spec = _spec("bar", labels, datasets, "count", horizontal=True, days=False)
    return Chart(f"{kind}-reasons", f"{name}: failure reasons, last {reasons['days']} days", spec)


def _spec(
    chart_type: str,
    labels: list[str],
    datasets: list[dict[str, Any]],
    value_format: str,
    *,
    currency: str = "",
    stacked: bool = True,
    horizontal: bool = False,
    days: bool = True,
) -> dict[str, Any]:
    return {
        "type": chart_type,
        "labels": [_day(label) for label in labels] if days else labels,
        "datasets": datasets,
        "format": value_format,  # count, percent or money (then in `currency`)
        "currency": currency,
        "stacked": stacked,
        "horizontal": horizontal,
    }


def _dataset(label: str, provider: str, data: list[Any], *, fill: bool = True) -> dict[str, Any]:
    color = PROVIDER_COLORS.get(provider) or OTHER_COLORS[sum(map(ord, provider)) % len(OTHER_COLORS)]
    return {"label": label, "data": data, "borderColor": color, "backgroundColor": color if fill else color + "33"}


def _percent(bps: int | None) -> str | None:
    return None if bps is None else f"{bps // 100}.{bps % 100:02d}"


def _day(label: str) -> str:
    day = date.fromisoformat(label)
    return f"{day.day} {day:%b}"


def _as_of(iso: str) -> str:
    if not iso:
        return ""
    return when(datetime.fromisoformat(iso.replace("Z", "+00:00")))
