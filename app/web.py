"""Browser pages: registration, the status page, and email and phone verification.

Server-rendered and CSRF-protected; every form works without JavaScript. The status page loads
`static/status.js`, which polls the JSON API and updates the page in place.
"""

from __future__ import annotations

from typing import Any

from flask import (
    Blueprint,
    abort,
    flash,
    jsonify,
    redirect,
    render_template,
    request,
    session,
    url_for,
)
from flask_wtf.csrf import CSRFError
from werkzeug.exceptions import NotFound
from werkzeug.wrappers import Response

from app import accounts
from app.api import VERIFICATION_STATUS
from app.config import DISPATCH_MODES, Settings
from app.extension import get_session, offload
from app.metrics import REGISTRATIONS
from app.models import User
from app.ratelimit import REGISTRATIONS as REGISTRATION_LIMIT
from app.ratelimit import VERIFICATIONS as VERIFICATION_LIMIT
from app.ratelimit import RateLimited, limit
from app.registration import (
    AlreadyRegistered,
    InvalidRegistration,
    describe_user,
    register_and_notify,
)
from app.resend import ResendError, TooManyResends, UnknownChannel
from app.resend import resend as resend_message

bp = Blueprint("web", __name__)

FORM_FIELDS = ("name", "email", "phone")
# Statuses that stay put until something else happens (an operator releases a held SMS).
SETTLED = ("sent", "failed", "skipped", "held")

Page = str | tuple[str, int] | tuple[str, int, dict[str, str]]


def _settings() -> Settings:
    settings: Settings = offload().settings
    return settings


@bp.get("/")
def index() -> Response:
    return redirect(url_for("web.register"))


@bp.route("/register", methods=["GET", "POST"])
@limit(REGISTRATION_LIMIT)
def register() -> Response | Page:
    settings = _settings()
    values = {field: request.form.get(field, "") for field in FORM_FIELDS}
    requested = request.form.get("mode")
    mode = requested or settings.dispatch_mode
    # The menu is offered only where the operator lets clients pick the mode.
    modes = DISPATCH_MODES if settings.clients_choose_mode else ()
    if request.method == "GET":
        return render_template("register.html", values=values, errors={}, mode=mode, modes=modes)
    try:
        registered = register_and_notify(
            get_session(), settings, offload().require_dispatcher(), values, requested
        )
    except (InvalidRegistration, AlreadyRegistered) as exc:
        status = 409 if isinstance(exc, AlreadyRegistered) else 400
        page = render_template(
            "register.html",
            values=values,
            errors=exc.fields,
            mode=mode,
            modes=modes,
            message=exc.message,
        )
        return page, status
    REGISTRATIONS.labels(mode=registered.mode, outcome="created").inc()
    session[SESSION_USER] = registered.user.id
    # Post/Redirect/Get: reloading the status page never registers twice.
    return redirect(url_for("web.status"), code=303)


def _status_page(user: User, *, errors: dict[str, str] | None = None, code: str = "") -> str:
    settled = all(n.status in SETTLED for n in user.notifications)
    return render_template(
        "status.html",
        user=user,
        settled=settled,
        errors=errors or {},
        code=code,
        max_attempts=_settings().sms_code_max_attempts,
    )


# The browser that registered (or confirmed the email link) holds its user in the session
# cookie (signed); the status page shows that user only, and no link carries an id.
SESSION_USER = "user_id"


def _session_user() -> User | None:
    user_id = session.get(SESSION_USER)
    return accounts.find_user(get_session(), user_id) if isinstance(user_id, str) else None


@bp.get("/status")
def status() -> Response | tuple[str, int, dict[str, str]]:
    user = _session_user()
    if user is None:
        return redirect(url_for("web.register"), code=303)
    # The page shows the user's email address and phone number: no shared caches.
    return _status_page(user), 200, {"Cache-Control": "no-store"}


@bp.get("/status/data")
def status_data() -> Response:
    """What static/status.js polls: the session's user, as the API describes it."""
    user = _session_user()
    if user is None:
        abort(404)
    response = jsonify(user=describe_user(user))
    response.headers["Cache-Control"] = "no-store"
    return response


@bp.post("/status/verify-phone")
@limit(VERIFICATION_LIMIT)
def verify_phone() -> Response | Page:
    user = _session_user()
    if user is None:
        return redirect(url_for("web.register"), code=303)
    code = request.form.get("code", "")
    try:
        accounts.verify_phone(get_session(), _settings(), user.id, code)
    except accounts.UnknownUser:
        abort(404)
    except accounts.AlreadyVerified:
        flash("Your phone number was already confirmed.")
        return redirect(url_for("web.status"), code=303)
    except accounts.VerificationError as exc:
        fields = exc.fields or {"code": exc.message}
        page = _status_page(exc.user or user, errors=fields, code=code[: accounts.CODE_MAX_LENGTH])
        return page, VERIFICATION_STATUS[type(exc)], {"Cache-Control": "no-store"}
    flash("Your phone number is confirmed.")
    return redirect(url_for("web.status"), code=303)


@bp.post("/status/resend/<channel>")
@limit(VERIFICATION_LIMIT)
def resend(channel: str) -> Response | Page:
    user = _session_user()
    if user is None:
        return redirect(url_for("web.register"), code=303)
    try:
        resend_message(get_session(), _settings(), offload().require_dispatcher(), user, channel)
    except UnknownChannel:
        abort(404)
    except accounts.AlreadyVerified as exc:
        flash(exc.message)
        return redirect(url_for("web.status"), code=303)
    except ResendError as exc:
        page = _status_page(user, errors={"resend": exc.message})
        headers = {"Cache-Control": "no-store"}
        if exc.retry_after:
            headers["Retry-After"] = str(exc.retry_after)
        return page, 410 if isinstance(exc, TooManyResends) else 429, headers
    flash("We sent you a new code." if channel == "sms" else "We sent you a new link.")
    return redirect(url_for("web.status"), code=303)


@bp.route("/verify-email/<token>", methods=["GET", "POST"])
@limit(VERIFICATION_LIMIT, methods=("GET", "POST"))
def verify_email(token: str) -> Page:
    # GET shows the page with its button and changes nothing: link scanners and mail previews
    # follow links. The button's POST (CSRF-protected) confirms.
    confirm = request.method == "POST"
    try:
        if confirm:
            user = accounts.verify_email(get_session(), _settings(), token)
        else:
            user = accounts.check_email_token(get_session(), _settings(), token)
    except accounts.VerificationError as exc:
        outcome = {
            accounts.ExpiredLink: "expired",
            accounts.AlreadyVerified: "used",
        }.get(type(exc), "invalid")
        page = render_template(
            "verify_email.html", outcome=outcome, message=exc.message, user=exc.user
        )
        return page, VERIFICATION_STATUS[type(exc)]
    outcome = "confirmed" if confirm else "confirm"
    if confirm:
        # Whoever confirms the link holds the mailbox: this browser may see the status.
        session[SESSION_USER] = user.id
    return render_template("verify_email.html", outcome=outcome, message="", user=user)


@bp.errorhandler(RateLimited)
def rate_limited(exc: RateLimited) -> tuple[str, int, dict[str, str]]:
    page = render_template(
        "error.html",
        title="Too many attempts",
        message=f"Too many attempts from your network. Wait {exc.seconds} seconds, then try again.",
    )
    return page, 429, {"Retry-After": str(exc.seconds)}


@bp.errorhandler(NotFound)
def not_found(_exc: Any) -> tuple[str, int]:
    page = render_template(
        "error.html",
        title="Page not found",
        message="There is no account here. Check the address, or register again.",
    )
    return page, 404


@bp.errorhandler(CSRFError)
def csrf_failed(_exc: Any) -> tuple[str, int]:
    page = render_template(
        "error.html",
        title="Please try again",
        message="This form has expired or did not come from this site. Go back, reload the "
        "page, and send it again.",
    )
    return page, 400
