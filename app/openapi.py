"""The OpenAPI 3 document for the JSON API, served at /api/openapi.json.

Built from the settings, so the document states what this deployment accepts (the dispatch
modes, the body size limit, the rate limits). tests/functional/test_openapi.py checks that every
/api route is described and every described path exists, that real responses validate against
the schemas, and Schemathesis fuzzes the app against it.
"""

from __future__ import annotations

import sys
from functools import cache
from typing import Any

from app.accounts import CODE_MAX_LENGTH
from app.config import BASELINE_MODE, DISPATCH_MODES, Settings
from app.models import CHANNELS, NOTIFICATION_STATUSES
from app.registration import NAME_MAX_LENGTH
from app.verification import SMS_CODE_DIGITS

JSON = "application/json"


# The custom string format of a phone number as typed; tests/contract_hooks.py generates it.
PHONE_FORMAT = "phone"
# What the server hands out: 256 random bits, URL-safe base64 without padding.
STATUS_TOKEN_PATTERN = "^[A-Za-z0-9_-]{43}$"  # noqa: S105 - a shape, not a secret
HEX_ID_PATTERN = "^[0-9a-f]{32}$"
E164_PATTERN = "^\\+[1-9][0-9]{1,16}$"
# What email_validator refuses beyond the `email` format (RFC 5321): a quoted local part, an
# address literal, a domain without a period or not ending in a letter (every TLD does), and
# the special-use domains (its SPECIAL_USE_DOMAIN_NAMES, in any case).
EMAIL_PATTERN = '^[^"@]+@[^@\\[]+\\.[^@.]*[A-Za-z]$'
SPECIAL_USE_DOMAINS = ("arpa", "invalid", "local", "localhost", "onion", "test")
SPECIAL_USE_PATTERN = (
    "(?:^|[.@])(?:"
    + "|".join("".join(f"[{c.upper()}{c}]" for c in name) for name in SPECIAL_USE_DOMAINS)
    + ")$"
)
# Spaces, tabs and hyphens between the digits are ignored (app.accounts.normalize_code).
SMS_CODE_PATTERN = f"^[ \\t-]*(?:[0-9][ \\t-]*){{{SMS_CODE_DIGITS}}}$"


def _char_class(keep: Any) -> str:
    """A regex class of every code point `keep` accepts, as literal characters (the one
    spelling ECMA 262 and Python's re both read the same way, astral planes included)."""
    ranges: list[tuple[int, int]] = []
    for point in range(sys.maxunicode + 1):
        if keep(chr(point)):
            if ranges and ranges[-1][1] == point - 1:
                ranges[-1] = (ranges[-1][0], point)
            else:
                ranges.append((point, point))

    def char(point: int) -> str:
        text = chr(point)
        return "\\" + text if text in "\\]^-[" else text

    return "[" + "".join(char(a) if a == b else f"{char(a)}-{char(b)}" for a, b in ranges) + "]"


@cache
def name_pattern() -> str:
    """Exactly the names validate_registration accepts: surrounding whitespace (str.strip) is
    trimmed, and what is left is 1 to NAME_MAX_LENGTH characters, each str.isprintable(). Built
    from this interpreter's Unicode tables, the same ones the validation uses."""
    space = _char_class(str.isspace)
    edge = _char_class(lambda c: c.isprintable() and not c.isspace())
    inner = _char_class(str.isprintable)
    return f"^{space}*{edge}(?:{inner}{{0,{NAME_MAX_LENGTH - 2}}}{edge})?{space}*$"


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any]) -> dict[str, Any]:
    return {JSON: {"schema": schema}}


def _error(description: str, *, retry_after: bool = False) -> dict[str, Any]:
    response: dict[str, Any] = {"description": description, "content": _json(_ref("Error"))}
    if retry_after:
        response["headers"] = {
            "Retry-After": {
                "description": "Seconds until the client's window closes.",
                "required": True,
                "schema": {"type": "integer", "minimum": 1},
            }
        }
    return response


def _common_errors(*codes: int) -> dict[str, Any]:
    catalogue = {
        "400": _error("The request is not valid; `fields` names each bad field."),
        "404": _error("No registration has this status token."),
        "409": _error("Already registered, or already verified."),
        "410": _error("The code expired, or too many wrong codes were tried."),
        "413": _error("The body is larger than the limit."),
        "415": _error("The body is not sent as application/json."),
        "429": _error("Too many requests from this client address.", retry_after=True),
        "500": _error("An unexpected server error (never expected; reported as a bug)."),
        "503": _error(
            "The database is busy or unreachable; nothing was changed. Try again.",
            retry_after=True,
        ),
    }
    return {str(code): catalogue[str(code)] for code in codes}


def build_document(settings: Settings) -> dict[str, Any]:
    modes = list(DISPATCH_MODES)
    if settings.bench_modes:
        modes.append(BASELINE_MODE)
    status_token = {
        "name": "token",
        "in": "path",
        "required": True,
        "description": "The status token returned once, when the user was created "
        "(`status_token`, and the `Location` header). The user's id opens nothing.",
        "schema": {"type": "string", "minLength": 1},
    }
    # The stateful walk: the token a registration returns opens each operation that takes it.
    token_links = {
        operation: {
            "operationId": operation,
            "parameters": {"token": "$response.body#/status_token"},
            "description": f"The new user's status token opens {operation}.",
        }
        for operation in ("getStatus", "verifyPhone", "resend")
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Offload API",
            "version": "1",
            "description": (
                "Register a user; the welcome email and the verification SMS go out in the "
                "chosen dispatch mode. Every error is JSON with `error`, `message` and "
                f"`fields`. Bodies are limited to {settings.max_body_bytes} bytes. "
                f"Registrations are limited to {settings.rate_limit_registrations} and "
                f"verification attempts to {settings.rate_limit_verifications} per client "
                "address" + ("" if settings.rate_limit_enabled else " (limits are off here)") + "."
            ),
        },
        "paths": {
            "/api/users": {
                "post": {
                    "operationId": "createUser",
                    "summary": "Register a user and send the email and SMS",
                    "parameters": [
                        {
                            "name": "mode",
                            "in": "query",
                            "required": False,
                            "description": "How the notifications are sent; the server's "
                            f"default is {settings.dispatch_mode}. "
                            + (
                                "Clients may choose (ALLOW_CLIENT_MODE)."
                                if settings.clients_choose_mode
                                else "Set by the operator: any other value is refused (400)."
                            ),
                            "schema": {
                                "type": "string",
                                "enum": modes
                                if settings.clients_choose_mode
                                else [settings.dispatch_mode],
                            },
                        }
                    ],
                    "requestBody": {"required": True, "content": _json(_ref("NewUser"))},
                    "responses": {
                        "201": {
                            "description": "Registered.",
                            "headers": {
                                "Location": {
                                    "description": "The new user's status URL (it holds "
                                    "the status token).",
                                    "required": True,
                                    "schema": {"type": "string"},
                                },
                                "Server-Timing": {
                                    "description": "What each step cost, in milliseconds.",
                                    "schema": {"type": "string"},
                                },
                            },
                            "content": _json(_ref("Created")),
                            "links": token_links,
                        },
                        **_common_errors(400, 409, 413, 415, 429, 500, 503),
                    },
                }
            },
            "/api/status/{token}": {
                "get": {
                    "operationId": "getStatus",
                    "summary": "A user, its verification state and its notifications",
                    "parameters": [status_token],
                    "responses": {
                        "200": {"description": "The user.", "content": _json(_ref("UserEnvelope"))},
                        **_common_errors(404, 500, 503),
                    },
                }
            },
            "/api/status/{token}/verify-phone": {
                "post": {
                    "operationId": "verifyPhone",
                    "summary": "Confirm the phone number with the code from the SMS",
                    "description": (
                        f"Each try spends one of {settings.sms_code_max_attempts} attempts; "
                        f"a code expires {settings.sms_code_max_age // 60} minutes after it "
                        "was sent."
                    ),
                    "parameters": [status_token],
                    "requestBody": {"required": True, "content": _json(_ref("PhoneCode"))},
                    "responses": {
                        "200": {
                            "description": "The phone number is confirmed.",
                            "content": _json(_ref("UserEnvelope")),
                        },
                        **_common_errors(400, 404, 409, 410, 413, 415, 429, 500, 503),
                    },
                }
            },
            "/api/status/{token}/resend": {
                "post": {
                    "operationId": "resend",
                    "summary": "Send a new email link or SMS code",
                    "description": (
                        f"At most {settings.resend_max} resends per user (both channels), "
                        f"{settings.resend_cooldown_seconds} s apart (429 with Retry-After "
                        "before; 410 once all are used). A new SMS code replaces the old one "
                        "and its attempts start again. The new message is a new notification "
                        "(it appears in `notifications`); over an SMS budget it is `held`."
                    ),
                    "parameters": [status_token],
                    "requestBody": {"required": True, "content": _json(_ref("ResendRequest"))},
                    "responses": {
                        "202": {
                            "description": "A new message is on its way.",
                            "content": _json(_ref("UserEnvelope")),
                        },
                        **_common_errors(400, 404, 409, 410, 413, 415, 429, 500, 503),
                    },
                }
            },
            "/api/openapi.json": {
                "get": {
                    "operationId": "getOpenApi",
                    "summary": "This document",
                    "responses": {
                        "200": {
                            "description": "The OpenAPI document.",
                            "content": _json({"type": "object"}),
                        }
                    },
                }
            },
        },
        "components": {"schemas": _schemas(modes)},
    }


def _schemas(modes: list[str]) -> dict[str, Any]:
    nullable_string = {"type": ["string", "null"]}
    return {
        "Error": {
            "type": "object",
            "required": ["error", "message", "fields"],
            "additionalProperties": False,
            "properties": {
                "error": {"type": "string", "description": "A machine-readable code."},
                "message": {"type": "string", "description": "What went wrong, for a person."},
                "fields": {
                    "type": "object",
                    "description": "A message for each field to blame; empty when none is.",
                    "additionalProperties": {"type": "string"},
                },
            },
        },
        "NewUser": {
            "type": "object",
            "required": ["name", "email", "phone"],
            "properties": {
                "name": {
                    "type": "string",
                    "minLength": 1,
                    "pattern": name_pattern(),
                    "description": f"1 to {NAME_MAX_LENGTH} printable characters once the "
                    "whitespace around them is trimmed: no control, format, private-use or "
                    "unassigned characters, and no separator but the space (Python's "
                    "str.isprintable, which the pattern spells out).",
                    "example": "Ada Lovelace",
                },
                "email": {
                    "type": "string",
                    "format": "email",
                    "maxLength": 254,
                    "pattern": EMAIL_PATTERN,
                    "not": {"pattern": SPECIAL_USE_PATTERN},
                    "description": "An address by RFC 5321, unquoted, at a domain with a "
                    "period and a top-level domain ending in a letter, not a special-use one "
                    f"({', '.join(SPECIAL_USE_DOMAINS)}); no DNS look-up. Stored normalized "
                    "(the domain lower-cased). Whitespace around it is trimmed.",
                    "example": "ada@example.com",
                },
                "phone": {
                    "type": "string",
                    "format": PHONE_FORMAT,
                    "minLength": 1,
                    "description": "A mobile number as a person types it: best with its "
                    "+country code (`+44 7911 123456`); without one it is read as a US number. "
                    "Spaces, dots, hyphens and brackets are allowed. `phone` format: a number "
                    "the numbering plan of its country allows (libphonenumber's is_valid_number);"
                    " stored as E.164. The operator may limit the countries (400 otherwise).",
                    "example": "+44 7911 123456",
                },
            },
        },
        "PhoneCode": {
            "type": "object",
            "required": ["code"],
            "properties": {
                "code": {
                    "type": "string",
                    "minLength": SMS_CODE_DIGITS,
                    "maxLength": CODE_MAX_LENGTH,
                    "pattern": SMS_CODE_PATTERN,
                    "description": f"The {SMS_CODE_DIGITS}-digit code (ASCII digits); spaces, "
                    "tabs and hyphens between them are ignored. A well-formed code that is not "
                    "the one sent is refused with 400 (`wrong_code`) and spends an attempt.",
                    "example": "123456",
                }
            },
        },
        "Notification": {
            "type": "object",
            "required": ["id", "channel", "status", "attempts", "last_error", "sent_at"],
            "additionalProperties": False,
            "properties": {
                "id": {"type": "string", "pattern": HEX_ID_PATTERN},
                "channel": {"type": "string", "enum": list(CHANNELS)},
                "status": {
                    "type": "string",
                    "enum": list(NOTIFICATION_STATUSES),
                    "description": "pending, queued: on its way; sent; failed: given up; "
                    "skipped: the benchmark's baseline; held: an SMS over the operator's SMS "
                    "budget, kept and sent once an operator releases it (`last_error` says "
                    "which budget).",
                },
                "attempts": {"type": "integer", "minimum": 0},
                "last_error": nullable_string,
                "sent_at": {
                    "type": ["string", "null"],
                    "format": "date-time",
                    "description": "ISO 8601, UTC.",
                },
            },
        },
        "User": {
            "type": "object",
            "required": [
                "id",
                "name",
                "email",
                "phone",
                "verified",
                "email_verified",
                "phone_verified",
                "created_at",
                "notifications",
            ],
            "additionalProperties": False,
            "properties": {
                "id": {"type": "string", "pattern": HEX_ID_PATTERN},
                "name": {"type": "string", "minLength": 1, "maxLength": NAME_MAX_LENGTH},
                "email": {"type": "string", "format": "email"},
                "phone": {"type": "string", "pattern": E164_PATTERN, "description": "E.164."},
                "verified": {"type": "boolean", "description": "Both email and phone."},
                "email_verified": {"type": "boolean"},
                "phone_verified": {"type": "boolean"},
                "created_at": {
                    "type": "string",
                    "format": "date-time",
                    "description": "ISO 8601, UTC.",
                },
                "notifications": {"type": "array", "items": _ref("Notification")},
            },
        },
        "ResendRequest": {
            "type": "object",
            "required": ["channel"],
            "properties": {"channel": {"type": "string", "enum": list(CHANNELS)}},
        },
        "UserEnvelope": {
            "type": "object",
            "required": ["user"],
            "additionalProperties": False,
            "properties": {"user": _ref("User")},
        },
        "Created": {
            "type": "object",
            "required": ["user", "mode", "status_token"],
            "additionalProperties": False,
            "properties": {
                "user": _ref("User"),
                "mode": {"type": "string", "enum": modes},
                "status_token": {
                    "type": "string",
                    "pattern": STATUS_TOKEN_PATTERN,
                    "description": "Opens GET /api/status/{token}; shown this once only.",
                },
            },
        },
    }
