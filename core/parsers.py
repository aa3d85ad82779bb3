"""DRF's parsers, bounded: a body over Django's DATA_UPLOAD_MAX_MEMORY_SIZE is a 413 and a JSON body nested deeper
than a real request ever is a 400, both in the one error body, never a RecursionError or a 500.

Its own module because DRF loads DEFAULT_PARSER_CLASSES while defining APIView: nothing here may import
rest_framework.views (core.api does).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from django.conf import settings
from rest_framework import parsers

from core.errors import InvalidRequest, RequestTooLarge

JSON_MAX_DEPTH = 64  # nesting of objects and arrays; every body this API takes is three levels deep at most


def body_too_large(limit: int | None = None) -> RequestTooLarge:
    limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE if limit is None else limit
    return RequestTooLarge(
        f"request body over DATA_UPLOAD_MAX_MEMORY_SIZE ({limit} bytes)",
        user_message="The request is larger than this service accepts.",
        action_required=f"Send a body of at most {limit} bytes; nothing was recorded.",
        details={"max_bytes": limit},
    )


def _refuse_oversized(parser_context: Mapping[str, Any] | None) -> None:
    """Django refuses a body over DATA_UPLOAD_MAX_MEMORY_SIZE when it reads one (request.body, request.POST);
    DRF's parsers stream past that check, so they make it here, from the same setting."""
    request, limit = (parser_context or {}).get("request"), settings.DATA_UPLOAD_MAX_MEMORY_SIZE
    if request is None or limit is None:
        return
    length = str(request.META.get("CONTENT_LENGTH") or "0")
    if not length.isdigit() or int(length) > limit:
        raise body_too_large(limit)


def _nesting_within(data: Any, limit: int) -> bool:
    pending = [(data, 1)]
    while pending:
        node, depth = pending.pop()
        children = node.values() if isinstance(node, dict) else node if isinstance(node, list) else None
        if children is None:
            continue
        if depth > limit:
            return False
        pending.extend((child, depth + 1) for child in children)
    return True


class JSONBodyParser(parsers.JSONParser):
    """DRF's JSON parser within the upload limit (413) and JSON_MAX_DEPTH (400, never a RecursionError)."""

    def parse(self, stream: Any, media_type: str | None = None, parser_context: Mapping[str, Any] | None = None) -> Any:
        _refuse_oversized(parser_context)
        try:
            data = super().parse(stream, media_type, parser_context)
        except RecursionError:
            data, too_deep = None, True
        else:
            too_deep = not _nesting_within(data, JSON_MAX_DEPTH)
        if too_deep:
            raise InvalidRequest(
                f"JSON body nested deeper than {JSON_MAX_DEPTH} levels",
                user_message="The request body is nested too deeply to be read.",
                action_required="Send a flat JSON object with the fields this endpoint documents.",
                details={"max_depth": JSON_MAX_DEPTH},
            )
        return data
