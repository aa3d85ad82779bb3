"""Request parameters of the Stripe sandbox, checked as Stripe checks them (a bad one is a 400 `Refusal`,
not stored), list pages, and the search query language (the part we use)."""

from __future__ import annotations

import re
from collections.abc import Iterable

from providers.sandbox.server import SandboxRequest
from providers.sandbox.stripe_state import Obj, Refusal


# --- parameters (form fields; nested keys stay flat, e.g. `metadata[order]`)
def _query(request: SandboxRequest) -> dict[str, str]:
    return {key: values[-1] for key, values in request.query.items()}


def _allow(params: dict[str, str], names: Iterable[str]) -> None:
    allowed = set(names)
    for key in params:
        if key.split("[", 1)[0] not in allowed:
            raise Refusal(400, f"Received unknown parameter: {key}", code="parameter_unknown", param=key, stored=False)


def _integer(params: dict[str, str], name: str, *, default: int | None = None, minimum: int = 1) -> int:
    raw = params.get(name)
    if raw is None:
        if default is None:
            raise Refusal(400, f"Missing required param: {name}.", code="parameter_missing", param=name, stored=False)
        return default
    if not re.fullmatch(r"-?\d+", raw):
        raise Refusal(400, f"Invalid integer: {raw}", code="parameter_invalid_integer", param=name, stored=False)
    if int(raw) < minimum:
        message = f"This value must be greater than or equal to {minimum}."
        raise Refusal(400, message, code="parameter_invalid_integer", param=name, stored=False)
    return int(raw)


def _required(params: dict[str, str], name: str) -> str:
    value = params.get(name, "")
    if not value:
        raise Refusal(400, f"Missing required param: {name}.", code="parameter_missing", param=name, stored=False)
    return value


def _currency(params: dict[str, str]) -> str:
    currency = _required(params, "currency")
    if not re.fullmatch(r"[A-Za-z]{3}", currency):
        raise Refusal(
            400, f"Invalid currency: {currency}.", code="parameter_invalid_string", param="currency", stored=False
        )
    return currency.lower()


def _choice(params: dict[str, str], name: str, choices: Iterable[str], default: str | None) -> str | None:
    value = params.get(name, default)
    options = sorted(choices)
    if value is not None and value not in options:
        message = f"Invalid {name}: must be one of {', '.join(options)}"
        raise Refusal(400, message, code="parameter_invalid_string", param=name, stored=False)
    return value


def _boolean(params: dict[str, str], name: str) -> bool:
    value = params.get(name, "false")
    if value not in ("true", "false"):
        raise Refusal(400, f"Invalid boolean: {value}", code="parameter_invalid_boolean", param=name, stored=False)
    return value == "true"


def _metadata(params: dict[str, str]) -> dict[str, str]:
    found = (re.fullmatch(r"metadata\[(.+)\]", key) for key in params)
    return {match[1]: params[match[0]] for match in found if match and params[match[0]] != ""}


def _limit(params: dict[str, str]) -> int:
    limit = _integer(params, "limit", default=10)
    if limit > 100:
        raise Refusal(400, "This value must be less than or equal to 100.", code="parameter_invalid_integer",
                      param="limit", stored=False)  # fmt: skip
    return limit


def _list_page(rows: list[Obj], params: dict[str, str], kind: str, url: str) -> Obj:
    """One page of a list endpoint: `rows` newest first, cut after `starting_after` and at `limit`."""
    limit = _limit(params)
    if params.get("starting_after"):
        ids = [row["id"] for row in rows]
        if params["starting_after"] not in ids:
            raise Refusal(404, f"No such {kind}: '{params['starting_after']}'", code="resource_missing",
                          param="starting_after", stored=False)  # fmt: skip
        rows = rows[ids.index(params["starting_after"]) + 1 :]
    return {"object": "list", "data": rows[:limit], "has_more": len(rows) > limit, "url": url}


# --- search: Stripe's query language, the part we use (metadata equality, AND)
_SEARCH_PAGE_PREFIX = "page_"
_SEARCH_CLAUSE = re.compile(
    r"""metadata\[(?P<kq>['"])(?P<key>(?:\\.|(?!(?P=kq))[^\\])*)(?P=kq)\]"""
    r""":(?P<vq>['"])(?P<value>(?:\\.|(?!(?P=vq))[^\\])*)(?P=vq)"""
)
_SEARCH_AND = re.compile(r"\s+AND\s+")


def parse_search_query(query: str) -> list[tuple[str, str]]:
    """`metadata['key']:'value' AND metadata["k2"]:"v2"` as [(key, value), ...]; anything else is refused
    with 400 (not stored), as Stripe refuses a query it cannot parse."""
    clauses, position, text = [], 0, query.strip()
    while True:
        match = _SEARCH_CLAUSE.match(text, position)
        if match is None or not match["key"]:
            raise _bad_query(query, position)
        clauses.append((_unescape(match["key"]), _unescape(match["value"])))
        position = match.end()
        if position == len(text):
            return clauses
        separator = _SEARCH_AND.match(text, position)
        if separator is None:
            raise _bad_query(query, position)
        position = separator.end()


def _unescape(quoted: str) -> str:
    return re.sub(r"\\(.)", r"\1", quoted)


def _bad_query(query: str, position: int) -> Refusal:
    message = (
        f"The query `{query}` could not be parsed at position {position}. This sandbox supports "
        "metadata['key']:'value' clauses joined by AND."
    )
    return Refusal(400, message, code="parameter_invalid_string", param="query", stored=False)


def _search_page(page: str | None) -> int:
    if page is None:
        return 0
    offset = page.removeprefix(_SEARCH_PAGE_PREFIX)
    if not page.startswith(_SEARCH_PAGE_PREFIX) or not offset.isdigit():
        raise Refusal(400, f"Invalid page: {page}", code="parameter_invalid_string", param="page", stored=False)
    return int(offset)
