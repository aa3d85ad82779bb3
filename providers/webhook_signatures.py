"""Pieces every webhook signature check needs: reading headers, parsing `k=v,k=v`
signature headers, timestamp freshness, and the signed JSON body."""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from typing import Any

import httpx

from providers.base import InvalidSignature

TOLERANCE_SECONDS = 300  # older or further in the future is refused
UNIX_TIME_DIGITS = 12  # a Unix time in seconds until the year 33658: longer is no time at all (and overflows)


def header_value(headers: Mapping[str, str], name: str) -> str:
    wanted = name.lower()
    return next((value for key, value in headers.items() if key.lower() == wanted), "")


def signature_fields(header: str, header_name: str) -> dict[str, str]:
    """`t=1,v1=abc` -> {"t": "1", "v1": "abc"}."""
    if not header:
        raise InvalidSignature(f"no {header_name} header")
    pairs = [part.partition("=") for part in header.split(",")]
    if any(separator != "=" for _, separator, _ in pairs):
        raise InvalidSignature(f"malformed {header_name} header")
    return {name.strip(): value.strip() for name, _, value in pairs}


def unix_time_text(text: str) -> bool:
    """A plain ASCII Unix time in seconds (what the providers sign), never a number that overflows a date."""
    return text.isascii() and text.isdigit() and len(text) <= UNIX_TIME_DIGITS


def fresh_timestamp(text: str, where: str) -> int:
    if not unix_time_text(text):
        raise InvalidSignature(f"no valid timestamp in {where}")
    timestamp = int(text)
    if abs(time.time() - timestamp) > TOLERANCE_SECONDS:
        raise InvalidSignature(f"timestamp {timestamp} is more than {TOLERANCE_SECONDS} s from now")
    return timestamp


def signed_json_object(payload: bytes) -> dict[str, Any]:
    try:
        event = json.loads(payload)
    except ValueError as error:
        raise InvalidSignature(f"signed body is not JSON: {error}") from error
    if not isinstance(event, dict):
        raise InvalidSignature("signed body is not a JSON object")
    return event


def response_body(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return response.text
