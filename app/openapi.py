"""The OpenAPI 3 document for the JSON API, served at /api/openapi.json.

Built from the settings, so the document states what this deployment accepts (the dispatch
modes, the body size limit, the rate limits). tests/functional/test_openapi.py checks that every
/api route is described and every described path exists, that real responses validate against
the schemas, and Schemathesis fuzzes the app against it.
"""

from __future__ import annotations

from typing import Any

from app.config import BASELINE_MODE, DISPATCH_MODES, Settings
from app.models import CHANNELS, NOTIFICATION_STATUSES
from app.verification import SMS_CODE_DIGITS

JSON = "application/json"


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
        "components": {"schemas": _schemas()},
    }


def _schemas() -> dict[str, Any]:
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
                "name": {"type": "string", "minLength": 1, "maxLength": 200},
                "email": {"type": "string", "format": "email"},
                "phone": {
                    "type": "string",
                    "description": "A mobile number, best with its +country code; stored as E.164.",
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
                    "maxLength": 20,
                    "description": f"The {SMS_CODE_DIGITS}-digit code; spaces and hyphens "
                    "are ignored.",
                    "example": "123456",
                }
            },
        },
        "Notification": {
            "type": "object",
            "required": ["id", "channel", "status", "attempts", "last_error", "sent_at"],
            "additionalProperties": False,
            "properties": {
                "id": {"type": "string"},
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
                "id": {"type": "string"},
                "name": {"type": "string"},
                "email": {"type": "string"},
                "phone": {"type": "string", "description": "E.164."},
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
                "mode": {"type": "string"},
                "status_token": {
                    "type": "string",
                    "description": "Opens GET /api/status/{token}; shown this once only.",
                },
            },
        },
    }
