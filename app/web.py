"""Browser pages: the registration form and the status page (server-rendered, CSRF-protected)."""

from __future__ import annotations

from flask import Blueprint, abort, current_app, redirect, render_template, request, url_for
from werkzeug.wrappers import Response

from app.config import DISPATCH_MODES
from app.db import get_session
from app.metrics import REGISTRATIONS
from app.models import User
from app.registration import AlreadyRegistered, InvalidRegistration, register_and_notify

bp = Blueprint("web", __name__)

FORM_FIELDS = ("name", "email", "phone")


@bp.get("/")
def index() -> Response:
    return redirect(url_for("web.register"))


@bp.route("/register", methods=["GET", "POST"])
def register() -> Response | str | tuple[str, int]:
    settings = current_app.extensions["offload.settings"]
    values = {field: request.form.get(field, "") for field in FORM_FIELDS}
    mode = request.form.get("mode", settings.dispatch_mode)
    if request.method == "GET":
        return render_template("register.html", values=values, errors={}, mode=mode,
                               modes=DISPATCH_MODES)
    try:
        registered = register_and_notify(
            get_session(), settings, current_app.extensions["offload.dispatcher"], values, mode
        )
    except (InvalidRegistration, AlreadyRegistered) as exc:
        status = 409 if isinstance(exc, AlreadyRegistered) else 400
        page = render_template("register.html", values=values, errors=exc.fields, mode=mode,
                               modes=DISPATCH_MODES, message=exc.message)
        return page, status
    REGISTRATIONS.labels(mode=mode, outcome="created").inc()
    # Post/Redirect/Get: reloading the status page never registers twice.
    return redirect(url_for("web.status", user_id=registered.user.id), code=303)


@bp.get("/users/<user_id>")
def status(user_id: str) -> str:
    user = get_session().get(User, user_id)
    if user is None:
        abort(404)
    settled = all(n.status in ("sent", "failed", "skipped") for n in user.notifications)
    return render_template("status.html", user=user, settled=settled)
