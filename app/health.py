"""Liveness, readiness and Prometheus metrics."""

from __future__ import annotations

from flask import Blueprint, Response, current_app, jsonify
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest, multiprocess
from sqlalchemy import text

from app.extension import get_session, offload
from app.messaging import PublishError
from app.metrics import REGISTRY

BROKER_CHECK_SECONDS = 2.0

bp = Blueprint("health", __name__)


@bp.get("/healthz")
def healthz() -> Response:
    return jsonify(status="ok")


@bp.get("/readyz")
def readyz() -> tuple[Response, int]:
    """Ready when the database answers and, if requests publish by default (queued mode), this
    process holds an open channel to a broker node."""
    extension = offload()
    database = broker = "up"
    try:
        get_session().execute(text("SELECT 1"))
    except Exception as exc:
        current_app.logger.warning("readiness: database check failed: %s", exc)
        database = "down"
    if extension.settings.dispatch_mode != "queued":
        broker = "unused"
    else:
        try:
            extension.require_dispatcher().publisher.check(timeout=BROKER_CHECK_SECONDS)
        except PublishError as exc:
            current_app.logger.warning("readiness: broker check failed: %s", exc)
            broker = "down"
    ready = database == "up" and broker != "down"
    status = "ready" if ready else "unavailable"
    return jsonify(status=status, database=database, broker=broker), 200 if ready else 503


@bp.get("/metrics")
def metrics() -> Response:
    folder = offload().settings.prometheus_multiproc_dir
    if not folder:
        return Response(generate_latest(REGISTRY), mimetype=CONTENT_TYPE_LATEST)
    # gunicorn: every worker writes its values to files in the folder; sum them all, so any
    # worker that takes the scrape answers for the whole server.
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=folder)  # type: ignore[no-untyped-call]
    return Response(generate_latest(registry), mimetype=CONTENT_TYPE_LATEST)


@bp.get("/noop")
def noop() -> Response:
    """The benchmark's ceiling: what the server and the load generator allow with no work."""
    return jsonify(ok=True)
