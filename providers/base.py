"""The provider boundary: results are data, not exceptions.

Every call that may move money at a provider returns one of four results:
- `Succeeded`: the provider did it;
- `Declined`: known NOT done (refused, invalid, or never sent); safe to fall
  back to another provider or to retry with the same key;
- `Pending`: accepted, the outcome comes later (webhook or sync);
- `Unknown`: we cannot tell (timeout, reset or 5xx after the request was
  sent). Never retried under a new key and never treated as declined: a sync
  asks the provider for the truth by our idempotency reference.
Exceptions from a client are bugs; SDK and HTTP errors never leak past it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import httpx


@dataclass(frozen=True)
class Succeeded:
    reference: str  # the provider's id for the object (pi_..., batch id, ...)
    status: str = ""
    raw: dict[str, Any] = field(default_factory=dict, repr=False)


@dataclass(frozen=True)
class Declined:
    reason: str
    code: str = ""
    retryable: bool = False  # True when it was never sent or the provider asks to try again
    raw: dict[str, Any] = field(default_factory=dict, repr=False)


@dataclass(frozen=True)
class Pending:
    reference: str
    status: str = ""
    raw: dict[str, Any] = field(default_factory=dict, repr=False)


@dataclass(frozen=True)
class Unknown:
    """We do not know whether it took effect.

    `answered`: the provider answered normally, but its answer cannot settle the outcome yet (Stripe Search
    may lag behind a PaymentIntent just made): a healthy call for the breaker, and not worth asking again at once.
    `asked`: False when nothing was asked at all (our own circuit refused the look-up): it spends no step of the
    sync schedule (providers.protocol.engine).
    """

    reason: str
    raw: dict[str, Any] = field(default_factory=dict, repr=False)
    answered: bool = False
    asked: bool = True


ProviderResult = Succeeded | Declined | Pending | Unknown


@dataclass(frozen=True)
class Absent:
    """A look-up's authoritative answer that the provider has no such object: the request never took effect."""

    reason: str = "not found at the provider"


LookupResult = ProviderResult | Absent

FOUND_FAILED = "found_failed"


def found_failed(reason: str, raw: dict[str, Any] | None = None) -> Declined:
    """A look-up found the object in a failed state (a refund failed, an authorization canceled): known not done.

    The only `Declined` a look-up may give: any other refusal of a look-up (429, 4xx, not sent) says nothing
    about the money and the protocol treats it as Unknown.
    """
    return Declined(reason=reason, code=FOUND_FAILED, raw=raw or {})


class InvalidSignature(Exception):
    """A webhook that is not what the provider sent: bad, missing or stale signature."""


def outcome_of_transport_error(error: httpx.TransportError) -> Declined | Unknown:
    """A connection that never opened is known not sent; anything later is unknown."""
    if isinstance(error, httpx.ConnectError | httpx.ConnectTimeout | httpx.PoolTimeout):
        return Declined(reason=f"provider unreachable: {error}", code="not_sent", retryable=True)
    return Unknown(reason=f"{type(error).__name__}: {error}")


def outcome_of_server_error(status: int, body: Any) -> Unknown:
    """A 5xx after sending: the provider may or may not have applied the request."""
    return Unknown(reason=f"provider answered {status}", raw=body if isinstance(body, dict) else {"body": body})
