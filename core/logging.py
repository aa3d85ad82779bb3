"""Structured logs: one JSON object a line, for our structlog loggers and every stdlib logger alike (Django,
Celery, httpx), each carrying the request id bound by the middleware (or by a Celery task, core.task_context).

- structlog hands its event dicts to the stdlib logging tree (`ProcessorFormatter.wrap_for_formatter`); the
  formatter built by `log_formatter` (settings.LOGGING) renders both kinds of record: timestamp, level, logger,
  event, request id, then the event's own fields.
- Every value of every line goes through `redact_pii`, nested dicts and lists too, exception text included:
  email addresses, phone numbers and card numbers (PAN-like digit runs that pass the Luhn check) are masked.
  A card keeps its last four digits, as PCI DSS allows; the rest says only what was there.
- Logs go to standard error (`ConsoleHandler`), so a command's own output on standard output stays parseable.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Mapping
from typing import Any, TextIO

import structlog
from structlog.typing import EventDict, Processor

# --- redaction -------------------------------------------------------------------------------------------------

EMAIL = re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}")
# 13 to 19 digits in one run, or printed in groups (4-4-4-4; Amex 4-6-5, Diners 4-6-4) split by a space or a
# dash, starting with a card network's digit (2 to 6: Mastercard, Amex/Diners/JCB, Visa, Discover/UnionPay),
# so epoch timestamps (1...) are left alone. The Luhn check (`_card`) keeps most other numbers as they are.
CARD = re.compile(r"(?<![\w.-])(?:[2-6]\d{12,18}|[2-6]\d{3}(?:[ -]\d{4}){3}|3\d{3}[ -]\d{6}[ -]\d{4,5})(?![\w-])")
PHONE = re.compile(
    r"(?<![\w+])\+\d(?:[ .()-]{0,2}\d){7,14}(?![\w-])"  # international: +63 917 123 4567, +1 (555) 123-4567
    r"|(?<![\w.-])09\d{2}[ .-]?\d{3}[ .-]?\d{4}(?![\w-])"  # a Philippine mobile: 0917 123 4567
    r"|(?<![\w.-])\(\d{3}\) ?\d{3}[ .-]\d{4}(?![\w-])"  # North American: (555) 123-4567
    r"|(?<![\w.-])\d{3}[.-]\d{3}[.-]\d{4}(?![\w.-])"  # 555-123-4567
)
# Fields whose whole value is personal whatever it looks like.
PII_KEYS = frozenset({"email", "email_address", "phone", "phone_number", "mobile", "mobile_number", "msisdn", "pan"})
PII_KEY_MASK = "[redacted]"
# Our own fields: never personal, and read on every line.
SAFE_KEYS = frozenset({"timestamp", "level", "logger", "request_id"})


def luhn_valid(digits: str) -> bool:
    total = 0
    for position, char in enumerate(reversed(digits)):
        digit = int(char)
        if position % 2:
            digit = digit * 2 - 9 if digit > 4 else digit * 2
        total += digit
    return total % 10 == 0


def _card(match: re.Match[str]) -> str:
    digits = re.sub(r"[ -]", "", match.group())
    if not 13 <= len(digits) <= 19 or not luhn_valid(digits):
        return match.group()
    return f"[redacted card ending {digits[-4:]}]"


def redact_text(text: str) -> str:
    """The text with card numbers, email addresses and phone numbers masked (cards first: their digit groups
    would otherwise pass for a phone number)."""
    if len(text) < 6:
        return text
    text = CARD.sub(_card, text)
    text = EMAIL.sub("[redacted email]", text)
    return PHONE.sub("[redacted phone]", text)


def redact_value(value: Any, key: str = "") -> Any:
    """Strings masked, containers walked; anything else as the JSON renderer would show it (its repr), masked."""
    if key.lower() in PII_KEYS and value not in (None, ""):
        return PII_KEY_MASK
    if isinstance(value, str):
        return redact_text(value)
    if value is None or isinstance(value, bool | float):
        return value
    if isinstance(value, int):
        return value if abs(value) < 10**12 else _redacted_int(value)
    if isinstance(value, Mapping):
        return {name: redact_value(item, str(name)) for name, item in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [redact_value(item) for item in value]
    return redact_text(repr(value))


def _redacted_int(value: int) -> int | str:
    masked = redact_text(str(value))
    return value if masked == str(value) else masked


def redact_pii(_logger: Any, _method: str, event_dict: EventDict) -> EventDict:
    """The structlog processor: every value of the event, at any depth."""
    for key, value in event_dict.items():
        if key not in SAFE_KEYS and not key.startswith("_"):
            event_dict[key] = redact_value(value, key)
    return event_dict


# --- the pipeline ----------------------------------------------------------------------------------------------

# What both structlog events and stdlib records get before rendering.
SHARED_PROCESSORS: list[Processor] = [
    structlog.contextvars.merge_contextvars,
    structlog.stdlib.add_log_level,
    structlog.stdlib.add_logger_name,
    structlog.processors.TimeStamper(fmt="iso", utc=True, key="timestamp"),
]


def configure_structlog() -> None:
    """structlog's loggers feed the stdlib logging tree; levels and handlers come from settings.LOGGING."""
    if structlog.is_configured():
        return
    structlog.configure(
        processors=[
            structlog.stdlib.filter_by_level,
            *SHARED_PROCESSORS,
            structlog.stdlib.PositionalArgumentsFormatter(),
            structlog.processors.StackInfoRenderer(),
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )


def log_formatter(renderer: str = "json") -> structlog.stdlib.ProcessorFormatter:
    """The formatter of settings.LOGGING: JSON lines (or, with LOG_FORMAT=console, key=value lines for a
    terminal), PII redacted in both. Python's warnings become log lines too (logger `py.warnings`), so standard
    error holds nothing but these lines."""
    configure_structlog()
    logging.captureWarnings(True)
    final: Processor = (
        structlog.dev.ConsoleRenderer(colors=False) if renderer == "console" else structlog.processors.JSONRenderer()
    )
    return structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[*SHARED_PROCESSORS, structlog.stdlib.ExtraAdder()],
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info,
            redact_pii,
            final,
        ],
    )


class ConsoleHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Standard error as it is at each line (a test's captured stream, a redirected one), not at start-up."""

    def __init__(self, level: int = logging.NOTSET) -> None:
        logging.Handler.__init__(self, level)

    @property  # type: ignore[override]
    def stream(self) -> TextIO:
        return sys.stderr

    @stream.setter
    def stream(self, _value: TextIO) -> None:
        pass
