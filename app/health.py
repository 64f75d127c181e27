"""Liveness, readiness and Prometheus metrics."""

from __future__ import annotations

from flask import Blueprint, Response, current_app, jsonify
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy import text

from app.extension import get_session
from app.metrics import REGISTRY

bp = Blueprint("health", __name__)


@bp.get("/healthz")
def healthz() -> Response:
    return jsonify(status="ok")


@bp.get("/readyz")
def readyz() -> tuple[Response, int]:
    try:
        get_session().execute(text("SELECT 1"))
    except Exception as exc:
        current_app.logger.warning("readiness: database check failed: %s", exc)
        return jsonify(status="unavailable", database="down"), 503
    return jsonify(status="ready", database="up"), 200


@bp.get("/metrics")
def metrics() -> Response:
    return Response(generate_latest(REGISTRY), mimetype=CONTENT_TYPE_LATEST)


@bp.get("/noop")
def noop() -> Response:
    """The benchmark's ceiling: what the server and the load generator allow with no work."""
    return jsonify(ok=True)
