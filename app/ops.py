"""The operator page, /ops: live queue depths, notifications pending, queued or failed, and the
parked jobs with a replay button.

Off unless OPS_TOKEN is set (404); with it set, every request must carry the token (the
`Authorization: Bearer` header, or `?token=` for a browser; the replay form sends it back), or
it gets 403. The broker side is services/parked.py's, the same as `python -m services.parked`.
"""

from __future__ import annotations

import hmac
from typing import Any

from flask import Blueprint, abort, flash, redirect, render_template, request, url_for
from sqlalchemy import func, select
from werkzeug.wrappers import Response

from app.extension import get_session, offload
from app.jobs import CHANNELS
from app.models import Notification

bp = Blueprint("ops", __name__)

PARKED_SHOWN = 50
REPLAY_LIMIT = 1000
REFRESH_SECONDS = 5
NOTIFICATION_STATES = ("pending", "queued", "failed")


def _token() -> str:
    expected = offload().settings.ops_token
    if not expected:
        abort(404)
    header = request.headers.get("Authorization", "")
    given = header.removeprefix("Bearer ").strip() if header.startswith("Bearer ") else ""
    given = given or request.values.get("token", "")
    if not hmac.compare_digest(given.encode(), expected.encode()):
        abort(403)
    return given


def notification_counts() -> dict[str, int]:
    rows = get_session().execute(
        select(Notification.channel, Notification.status, func.count())
        .where(Notification.status.in_(NOTIFICATION_STATES))
        .group_by(Notification.channel, Notification.status)
    )
    counts = {f"{channel} {status}": 0 for channel in CHANNELS for status in NOTIFICATION_STATES}
    for channel, status, count in rows:
        counts[f"{channel} {status}"] = count
    return counts


@bp.get("/ops")
def ops_page() -> Any:
    token = _token()
    from services.parked import snapshot  # the broker side; pika stays out of the views

    settings = offload().settings
    broker_error = ""
    try:
        broker = snapshot(settings.amqp_url, settings.retry_delays_ms, limit=PARKED_SHOWN)
        depths, parked = broker.depths, broker.parked
    except Exception as exc:  # the page still shows the database side
        broker_error = f"{type(exc).__name__}: {exc}"
        depths, parked = [], []
    return render_template(
        "ops.html",
        token=token,
        depths=depths,
        parked=parked,
        counts=notification_counts(),
        broker_error=broker_error,
        channels=CHANNELS,
        refresh=REFRESH_SECONDS,
    )


@bp.post("/ops/replay")
def replay_parked() -> Response:
    token = _token()
    from services.parked import replay

    channel = request.form.get("channel", "")
    if channel not in CHANNELS:
        abort(400)
    moved = replay(offload().settings.amqp_url, channel, REPLAY_LIMIT)
    flash(f"Replayed {moved} parked {channel} job(s).")
    return redirect(url_for("ops.ops_page", token=token))
