"""The Flask application factory.

Infrastructure is injected: tests pass twins (an in-memory publisher, recording senders), the
entry points pass nothing and get the real ones built from the settings.
"""

from __future__ import annotations

import logging
from typing import Any

from flask import Flask
from flask_wtf.csrf import CSRFProtect
from sqlalchemy.engine import Engine

from app.config import Settings, load_settings
from app.messaging import Publisher

csrf = CSRFProtect()


def create_app(
    settings: Settings | None = None,
    *,
    publisher: Publisher | None = None,
    email_sender: Any = None,
    sms_sender: Any = None,
    engine: Engine | None = None,
) -> Flask:
    # Validated here too, not only in load_settings(): a caller that builds Settings by hand
    # (tests, embedders) gets the same refusals, e.g. the default SECRET_KEY in production.
    settings = (settings or load_settings()).validate()
    app = Flask(__name__)
    app.config.update(
        SECRET_KEY=settings.secret_key,
        MAX_CONTENT_LENGTH=settings.max_body_bytes,
        WTF_CSRF_TIME_LIMIT=None,
        JSON_SORT_KEYS=False,
        # The session cookie carries the CSRF token and flashed messages: never readable by
        # scripts, never sent along with another site's requests, HTTPS-only when served so.
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Lax",
        SESSION_COOKIE_SECURE=settings.base_url.startswith("https://"),
    )
    app.extensions["offload.settings"] = settings
    register_logging(settings)
    register_database(app, settings, engine)
    register_rate_limits(app, settings)
    register_dispatcher(app, settings, publisher, email_sender, sms_sender)
    register_blueprints(app)
    register_security(app)
    return app


def register_logging(settings: Settings) -> None:
    from app.logs import configure_logging

    configure_logging(settings.log_level)


def register_database(app: Flask, settings: Settings, engine: Engine | None) -> None:
    from app import db

    db.init_app(
        app,
        engine
        or db.make_engine(settings.database_url, busy_timeout=settings.database_busy_timeout),
    )


def register_rate_limits(app: Flask, settings: Settings) -> None:
    from app import ratelimit

    ratelimit.init_app(app, settings, app.extensions["offload.engine"])


def register_dispatcher(
    app: Flask,
    settings: Settings,
    publisher: Publisher | None,
    email_sender: Any,
    sms_sender: Any,
) -> None:
    from app.dispatch import Dispatcher
    from app.messaging import PikaPublisher
    from services.email import SmtpEmailSender
    from services.sms import HttpSmsSender

    app.extensions["offload.dispatcher"] = Dispatcher(
        email_sender=email_sender or SmtpEmailSender.from_settings(settings),
        sms_sender=sms_sender or HttpSmsSender.from_settings(settings),
        publisher=publisher
        or PikaPublisher(settings.amqp_url, retry_delays_ms=settings.retry_delays_ms),
        publish_timeout=settings.publish_timeout,
    )


def register_blueprints(app: Flask) -> None:
    from app import api, compare, health, web

    app.register_blueprint(api.bp)
    app.register_blueprint(web.bp)
    app.register_blueprint(health.bp)
    app.register_blueprint(compare.bp)
    csrf.exempt(api.bp)
    csrf.exempt(health.bp)
    api.register_error_handlers(app)


def register_security(app: Flask) -> None:
    csrf.init_app(app)

    @app.after_request
    def security_headers(response: Any) -> Any:
        response.headers.setdefault(
            "Content-Security-Policy",
            "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
            "frame-ancestors 'none'; form-action 'self'; base-uri 'none'",
        )
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("Referrer-Policy", "no-referrer")
        response.headers.setdefault("X-Frame-Options", "DENY")
        return response

    logging.getLogger(__name__).debug("security headers on")
