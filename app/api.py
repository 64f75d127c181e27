"""The JSON API. Thin views: parse, call the domain, map its errors to JSON."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Flask, Response, current_app, jsonify, request, url_for
from werkzeug.exceptions import HTTPException

from app.db import get_session
from app.metrics import REGISTRATIONS, STEP_SECONDS
from app.models import User
from app.registration import (
    AlreadyRegistered,
    InvalidRegistration,
    describe_user,
    register_and_notify,
)

bp = Blueprint("api", __name__, url_prefix="/api")


def error(status: int, code: str, message: str, fields: dict[str, str] | None = None) -> Response:
    response = jsonify(error=code, message=message, fields=fields or {})
    response.status_code = status
    return response


def server_timing(timings_ms: dict[str, float]) -> str:
    # The standard Server-Timing header: browsers' dev tools and curl -v show it.
    return ", ".join(f"{step};dur={ms:.2f}" for step, ms in timings_ms.items())


@bp.post("/users")
def create_user() -> Response:
    settings = current_app.extensions["offload.settings"]
    mode = request.args.get("mode", settings.dispatch_mode)
    if not request.is_json:
        return error(415, "unsupported_media_type", "Send the user as application/json.")
    data: Any = request.get_json(silent=True)
    if data is None:
        return error(400, "invalid_json", "The request body is not valid JSON.")
    if not isinstance(data, dict):
        return error(400, "invalid_json", "The request body must be a JSON object.")
    try:
        registered = register_and_notify(
            get_session(), settings, current_app.extensions["offload.dispatcher"], data, mode
        )
    except InvalidRegistration as exc:
        REGISTRATIONS.labels(mode=mode if exc.fields.keys() != {"mode"} else "unknown",
                             outcome="invalid").inc()
        return error(400, "invalid", exc.message, exc.fields)
    except AlreadyRegistered as exc:
        REGISTRATIONS.labels(mode=mode, outcome="duplicate").inc()
        return error(409, "already_registered", exc.message, exc.fields)
    REGISTRATIONS.labels(mode=mode, outcome="created").inc()
    for step, ms in registered.timings_ms.items():
        STEP_SECONDS.labels(mode=mode, step=step).observe(ms / 1000)
    response = jsonify(user=describe_user(registered.user), mode=mode)
    response.status_code = 201
    response.headers["Location"] = url_for("api.get_user", user_id=registered.user.id)
    response.headers["Server-Timing"] = server_timing(registered.timings_ms)
    return response


@bp.get("/users/<user_id>")
def get_user(user_id: str) -> Response:
    user = get_session().get(User, user_id)
    if user is None:
        return error(404, "not_found", "No user with this id.")
    return jsonify(user=describe_user(user))


def register_error_handlers(app: Flask) -> None:
    """JSON errors for every /api path, HTML (Flask's default) elsewhere."""

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException) -> Any:
        if not request.path.startswith("/api/"):
            return exc
        code = (exc.name or "error").lower().replace(" ", "_")
        return error(exc.code or 500, code, exc.description or exc.name)
