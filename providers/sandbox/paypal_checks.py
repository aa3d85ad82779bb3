"""PayPal sandbox request checks: PayPal-shaped error bodies and the validation of requests.

Checks a create-payout body against PayPal's rules and the official spec's `create_payout_request`
schema (see providers/specs/paypal/), the paging query of a batch read, and names the fields a
webhook-signature verification request must carry. The routes in providers/sandbox/paypal.py use these.
"""

from __future__ import annotations

import json
import secrets
from functools import cache
from pathlib import Path
from typing import Any

from core.money import Money, MoneyError
from providers.sandbox.server import SandboxResponse

MAX_ITEMS = 15_000
RECIPIENT_TYPES = frozenset({"EMAIL", "PHONE", "PAYPAL_ID"})
INFORMATION_LINK = "https://developer.paypal.com/docs/api/payments.payouts-batch/#errors"


# --- small helpers
def _field_path(path: Any) -> str:
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def _error(status: int, name: str, message: str, *, details: Any = (), links: Any = ()) -> SandboxResponse:
    debug_id = secrets.token_hex(7)
    body = {
        "name": name,
        "message": message,
        "debug_id": debug_id,
        "information_link": INFORMATION_LINK,
        "details": list(details),
        "links": list(links),
    }
    return SandboxResponse(status, body, headers={"Paypal-Debug-Id": debug_id})


def _invalid(details: list[dict[str, str]]) -> SandboxResponse:
    return _error(400, "VALIDATION_ERROR", "Invalid request - see details", details=details)


def _detail(field_name: str, issue: str, location: str = "body") -> dict[str, str]:
    return {"field": field_name, "location": location, "issue": issue}


def _not_found() -> SandboxResponse:
    return _error(404, "INVALID_RESOURCE_ID", "Requested resource ID was not found.")


@cache
def _create_payout_validator() -> Any:
    """A validator for the official `create_payout_request` schema, or None without jsonschema or the spec."""
    try:
        import jsonschema
    except ImportError:
        return None
    path = spec_path("payments_payouts_batch_v1.json")
    if not path.exists():
        return None
    spec = json.loads(path.read_text())
    return jsonschema.Draft4Validator({**spec, "$ref": "#/components/schemas/create_payout_request"})


def spec_path(name: str) -> Path:
    """The official PayPal specs, vendored in providers/specs/."""
    return Path(__file__).resolve().parent.parent / "specs" / "paypal" / name


def _spec_problems(body: Any) -> list[dict[str, str]]:
    validator = _create_payout_validator()
    if validator is None:
        return []
    return [_detail(_field_path(error.absolute_path), error.message) for error in validator.iter_errors(body)]


_VERIFY_FIELDS = (
    "auth_algo",
    "cert_url",
    "transmission_id",
    "transmission_sig",
    "transmission_time",
    "webhook_id",
    "webhook_event",
)


# --- request checks
def _batch_problems(body: Any) -> list[dict[str, str]]:
    """PayPal's checks on a create request: size first (cheap), then the spec schema, then semantics."""
    if not isinstance(body, dict) or not isinstance(body.get("items"), list):
        return [_detail("items", "MISSING_REQUIRED_PARAMETER")]
    if not 1 <= len(body["items"]) <= MAX_ITEMS:
        return [_detail("items", f"Number of payout items must be between 1 and {MAX_ITEMS}")]
    problems = _spec_problems(body)
    if problems:
        return problems
    header = body.get("sender_batch_header")
    if not isinstance(header, dict):
        return [_detail("sender_batch_header", "MISSING_REQUIRED_PARAMETER")]
    return _item_problems(body["items"], header)


def _item_problems(items: list[Any], header: dict[str, Any]) -> list[dict[str, str]]:
    problems: list[dict[str, str]] = []
    currencies: set[str] = set()
    for index, item in enumerate(items):
        if not isinstance(item, dict):
            problems.append(_detail(f"items[{index}]", "Payout item must be an object"))
            continue
        problems += _one_item_problems(index, item, header)
        if isinstance(item.get("amount"), dict):
            currencies.add(str(item["amount"].get("currency")))
    if not problems and len(currencies) > 1:
        problems.append(_detail("items", "All items in a payout must specify the same currency"))
    return problems


def _one_item_problems(index: int, item: dict[str, Any], header: dict[str, Any]) -> list[dict[str, str]]:
    prefix = f"items[{index}]"
    problems: list[dict[str, str]] = []
    recipient_type = item.get("recipient_type") or header.get("recipient_type")
    if recipient_type not in RECIPIENT_TYPES:
        problems.append(_detail(f"{prefix}.recipient_type", "Recipient type must be EMAIL, PHONE or PAYPAL_ID"))
    receiver = item.get("receiver")
    if not isinstance(receiver, str) or not receiver or (recipient_type == "EMAIL" and "@" not in receiver):
        problems.append(_detail(f"{prefix}.receiver", "Receiver is invalid or does not match with type"))
    amount = item.get("amount")
    if not isinstance(amount, dict) or not _amount_valid(amount.get("value"), amount.get("currency")):
        problems.append(
            _detail(
                f"{prefix}.amount",
                "Currency amount must be a positive number with at most the currency's decimal places",
            )
        )
    return problems


def _amount_valid(value: Any, currency: Any) -> bool:
    if not isinstance(value, str) or not isinstance(currency, str):
        return False
    try:
        return Money.parse(value, currency).minor > 0
    except MoneyError:
        return False


def _paging(query: dict[str, list[str]]) -> tuple[int, int, bool] | SandboxResponse:
    try:
        page = int(query.get("page", ["1"])[-1])
        page_size = int(query.get("page_size", ["1000"])[-1])
    except ValueError:
        return _invalid([_detail("page", "Page and page_size must be integers", "query")])
    if not (1 <= page <= 1000 and 1 <= page_size <= 1000):
        return _invalid([_detail("page_size", "Page and page_size must be between 1 and 1000", "query")])
    return page, page_size, query.get("total_required", ["false"])[-1].lower() == "true"
