"""Structured logs: one JSON object a line on stderr, with any `extra=` fields kept.

No email address, phone number or verification code leaves here in clear: code that logs a user
passes `mask_email(...)`/`mask_phone(...)`, and the formatter masks whatever slips through
anyway (an SMTP error quoting its recipient, a traceback) in the message, the `extra=` fields
and the exception text.
"""

from __future__ import annotations

import json
import logging
import re
import sys
from datetime import UTC, datetime
from typing import Any

_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}

# Finding, not validating: these only have to catch what looks like personal data in free text,
# and over-masking is harmless. (Validation uses email-validator and phonenumbers.)
_EMAIL = re.compile(r"[\w.!#$%&'*+/=?^`{|}~-]+@[\w-]+(?:\.[\w-]+)+")
_PHONE = re.compile(r"\+\d[\d ().-]{5,20}\d")
_CODE = re.compile(r"(?i)(\bcode\b\D{0,20}?)\d{4,8}\b")


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": redact(record.getMessage()),
        }
        entry.update({k: _redact_value(v) for k, v in vars(record).items() if k not in _STANDARD})
        if record.exc_info:
            entry["exception"] = redact(self.formatException(record.exc_info))
        return json.dumps(entry, default=str)


def configure_logging(level: str) -> None:
    root = logging.getLogger()
    if any(isinstance(h.formatter, JsonFormatter) for h in root.handlers):
        root.setLevel(level.upper())
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root.addHandler(handler)
    root.setLevel(level.upper())
    # pika logs every connection step at INFO; keep its warnings only.
    logging.getLogger("pika").setLevel(logging.WARNING)


def mask_email(email: str) -> str:
    local, _, domain = email.partition("@")
    return f"{local[:1]}***@{domain}" if domain else "***"


def mask_phone(phone: str) -> str:
    return f"{phone[:3]}***{phone[-2:]}" if len(phone) > 6 else "***"


def redact(text: str) -> str:
    """Mask every email address, international phone number and verification code in text."""
    text = _EMAIL.sub(lambda m: mask_email(m.group()), text)
    text = _PHONE.sub(lambda m: mask_phone(re.sub(r"[^\d+]", "", m.group())), text)
    return _CODE.sub(lambda m: f"{m.group(1)}******", text)


def _redact_value(value: Any) -> Any:
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, (int, float, bool)) or value is None:
        return value
    if isinstance(value, dict):
        return {str(k): _redact_value(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_redact_value(v) for v in value]
    return redact(str(value))
