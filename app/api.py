"""The JSON API. Thin views: parse, call the domain, map its errors to JSON.

The OpenAPI document at /api/openapi.json (app/openapi.py) describes every route here, and a
test keeps the two in step.
"""

from __future__ import annotations

import sys
from typing import Any

from flask import Blueprint, Flask, Response, current_app, jsonify, request, url_for
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from werkzeug.exceptions import HTTPException, InternalServerError, ServiceUnavailable

from app import accounts
from app.extension import get_session, offload
from app.metrics import REGISTRATIONS, STEP_SECONDS
from app.openapi import build_document
from app.ratelimit import REGISTRATIONS as REGISTRATION_LIMIT
from app.ratelimit import VERIFICATIONS as VERIFICATION_LIMIT
from app.ratelimit import limit
from app.registration import (
    AlreadyRegistered,
    InvalidRegistration,
    describe_user,
    register_and_notify,
)
from app.resend import ResendError, TooManyResends, UnknownChannel
from app.resend import resend as resend_message
from app.servertiming import format_server_timing

bp = Blueprint("api", __name__, url_prefix="/api")

DATABASE_RETRY_AFTER_SECONDS = 1


def error(status: int, code: str, message: str, fields: dict[str, str] | None = None) -> Response:
    response = jsonify(error=code, message=message, fields=fields or {})
    response.status_code = status
    return response


# How each verification refusal reads over HTTP. The web pages use the same statuses.
VERIFICATION_STATUS: dict[type[accounts.VerificationError], int] = {
    accounts.UnknownUser: 404,
    accounts.InvalidLink: 400,
    accounts.InvalidCode: 400,
    accounts.WrongCode: 400,
    accounts.AlreadyVerified: 409,
    # The link or code can no longer work, whatever is sent: gone.
    accounts.ExpiredLink: 410,
    accounts.CodeExpired: 410,
    accounts.TooManyAttempts: 410,
}


def json_object(what: str) -> dict[str, Any] | Response:
    """The request's JSON object, or the error response to return instead."""
    if not request.is_json:
        return error(415, "unsupported_media_type", f"Send the {what} as application/json.")
    try:
        data: Any = request.get_json(silent=True)
    except RecursionError:
        # json nests by recursion: `[[[[...]]]]` a few thousand deep, well inside the body
        # limit, exhausts the stack. Refused like any other body that is not usable JSON.
        return error(400, "invalid_json", "The request body is nested too deeply.")
    if data is None:
        return error(400, "invalid_json", "The request body is not valid JSON.")
    if not isinstance(data, dict):
        return error(400, "invalid_json", "The request body must be a JSON object.")
    return data


@bp.post("/users")
@limit(REGISTRATION_LIMIT)
def create_user() -> Response:
    settings = offload().settings
    requested = request.args.get("mode")
    mode = requested or settings.dispatch_mode
    data = json_object("user")
    if isinstance(data, Response):
        return data
    try:
        registered = register_and_notify(
            get_session(), settings, offload().require_dispatcher(), data, requested
        )
    except InvalidRegistration as exc:
        REGISTRATIONS.labels(
            mode=mode if exc.fields.keys() != {"mode"} else "unknown", outcome="invalid"
        ).inc()
        return error(400, "invalid", exc.message, exc.fields)
    except AlreadyRegistered as exc:
        REGISTRATIONS.labels(mode=mode, outcome="duplicate").inc()
        return error(409, "already_registered", exc.message, exc.fields)
    mode = registered.mode
    REGISTRATIONS.labels(mode=mode, outcome="created").inc()
    for step, ms in registered.timings_ms.items():
        STEP_SECONDS.labels(mode=mode, step=step).observe(ms / 1000)
    response = jsonify(
        user=describe_user(registered.user), mode=mode, status_token=registered.status_token
    )
    response.status_code = 201
    # The token is the only way back to this status: shown once, kept out of caches.
    response.headers["Location"] = url_for("api.get_status", token=registered.status_token)
    response.headers["Cache-Control"] = "no-store"
    response.headers["Server-Timing"] = format_server_timing(registered.timings_ms)
    return response


@bp.get("/status/<token>")
def get_status(token: str) -> Response:
    """A user's status, opened by the status token handed out at registration (not the id)."""
    user = accounts.find_user_by_status_token(get_session(), token)
    if user is None:
        return error(404, "not_found", "No registration has this status token.")
    response = jsonify(user=describe_user(user))
    # The body holds the user's email address and phone number: keep it out of shared caches.
    response.headers["Cache-Control"] = "no-store"
    return response


@bp.post("/status/<token>/verify-phone")
@limit(VERIFICATION_LIMIT)
def verify_phone(token: str) -> Response:
    data = json_object("code")
    if isinstance(data, Response):
        return data
    code = data.get("code")
    if not isinstance(code, str):
        message = "Send the code from the SMS as a string."
        return error(400, "invalid_code", message, {"code": message})
    user = accounts.find_user_by_status_token(get_session(), token)
    if user is None:
        return error(404, "not_found", "No registration has this status token.")
    settings = offload().settings
    try:
        user = accounts.verify_phone(get_session(), settings, user.id, code)
    except accounts.VerificationError as exc:
        return error(VERIFICATION_STATUS[type(exc)], exc.code, exc.message, exc.fields)
    response = jsonify(user=describe_user(user))
    response.headers["Cache-Control"] = "no-store"
    return response


@bp.post("/status/<token>/resend")
@limit(VERIFICATION_LIMIT)
def resend(token: str) -> Response:
    """A new email link or SMS code: `{"channel": "email"}` or `{"channel": "sms"}`."""
    data = json_object("channel")
    if isinstance(data, Response):
        return data
    channel = data.get("channel")
    user = accounts.find_user_by_status_token(get_session(), token)
    if user is None:
        return error(404, "not_found", "No registration has this status token.")
    try:
        resend_message(
            get_session(),
            offload().settings,
            offload().require_dispatcher(),
            user,
            channel if isinstance(channel, str) else "",
        )
    except UnknownChannel as exc:
        return error(400, exc.code, "Unknown channel.", {"channel": exc.message})
    except TooManyResends as exc:
        # No wait makes it work again: gone, like a code whose attempts are spent.
        return error(410, exc.code, exc.message)
    except ResendError as exc:
        response = error(429, exc.code, exc.message)
        if exc.retry_after:
            response.headers["Retry-After"] = str(exc.retry_after)
        return response
    except accounts.AlreadyVerified as exc:
        return error(409, exc.code, exc.message)
    response = jsonify(user=describe_user(user))
    response.status_code = 202
    response.headers["Cache-Control"] = "no-store"
    return response


@bp.get("/openapi.json")
def openapi() -> Response:
    return jsonify(build_document(offload().settings))


def register_error_handlers(app: Flask) -> None:
    """JSON errors for every /api path, HTML (Flask's default) elsewhere."""

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException) -> Any:
        if not request.path.startswith("/api/"):
            return exc
        code = (exc.name or "error").lower().replace(" ", "_")
        response = error(exc.code or 500, code, exc.description or exc.name)
        # Keep what the exception says beyond its body: Allow on a 405, Retry-After on a 429.
        for name, value in exc.get_headers():
            if name.lower() != "content-type":
                response.headers[name] = value
        return response

    @app.errorhandler(DBAPIError)
    def database_error(exc: DBAPIError) -> Any:
        # A PostgreSQL server starting up or shutting down refuses with SQLSTATE class 57
        # (57P03 "the database system is starting up"), which pg8000 reports as a plain
        # DatabaseError; a lost connection is class 08. Both are worth a retry, not a 500.
        if exc.connection_invalidated or _sqlstate(exc)[:2] in ("08", "57"):
            return database_unavailable(exc)
        current_app.log_exception(sys.exc_info())
        failed = InternalServerError()
        return http_error(failed) if request.path.startswith("/api/") else failed

    @app.errorhandler(OperationalError)
    @app.errorhandler(InterfaceError)
    @app.errorhandler(PoolTimeout)
    def database_unavailable(exc: DBAPIError | PoolTimeout) -> Any:
        # SQLite's write lock held past the busy timeout, the database server unreachable or
        # restarting (pg8000 says "network error", an InterfaceError, when the server drops a
        # connection mid-transaction), or no pooled connection free within
        # DATABASE_POOL_TIMEOUT: the transaction was rolled back (or never began), so the
        # client may simply try again.
        current_app.logger.warning("database unavailable: %s", getattr(exc, "orig", None) or exc)
        unavailable = ServiceUnavailable(
            "The database is busy or unreachable; nothing was changed. Try again in a moment.",
            retry_after=DATABASE_RETRY_AFTER_SECONDS,
        )
        return http_error(unavailable) if request.path.startswith("/api/") else unavailable


def _sqlstate(exc: DBAPIError) -> str:
    """The SQLSTATE pg8000 put in its error ("" for other drivers and errors)."""
    detail = exc.orig.args[0] if exc.orig is not None and exc.orig.args else None
    return str(detail.get("C", "")) if isinstance(detail, dict) else ""
