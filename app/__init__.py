"""The Flask application factory.

Infrastructure is injected: tests pass twins (an in-memory publisher, recording senders), the
entry points pass nothing and get the real ones built from the settings.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from app.config import Settings, load_settings

# Flask is imported inside the factory, not here: the workers import `app.config`, `app.db` and
# the other plain modules of this package, and must never pay for (or depend on) Flask.
if TYPE_CHECKING:
    from flask import Flask
    from sqlalchemy.engine import Engine

    from app.extension import Offload
    from app.jobs import EmailJob, SmsJob
    from app.messaging import Publisher
    from app.senders import Sender


def create_app(
    settings: Settings | None = None,
    *,
    publisher: Publisher | None = None,
    email_sender: Sender[EmailJob] | None = None,
    sms_sender: Sender[SmsJob] | None = None,
    engine: Engine | None = None,
) -> Flask:
    from flask import Flask

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
    register_logging(settings)
    extension = register_database(app, settings, engine)
    register_rate_limits(extension)
    register_dispatcher(extension, publisher, email_sender, sms_sender)
    register_blueprints(app)
    register_security(app)
    register_proxy_headers(app, settings)
    return app


def register_proxy_headers(app: Flask, settings: Settings) -> None:
    """Behind RATE_LIMIT_TRUSTED_PROXIES proxies, believe what they say of the client.

    X-Forwarded-Proto makes a request the proxy took over HTTPS `https` here, so CSRF checks the
    Referer against the https origin the browser used; X-Forwarded-For gives the client address.
    With no trusted proxy these headers are ignored: any client could send them.
    """
    hops = settings.rate_limit_trusted_proxies
    if hops > 0:
        from werkzeug.middleware.proxy_fix import ProxyFix

        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=hops, x_proto=hops)  # type: ignore[method-assign]


def register_logging(settings: Settings) -> None:
    from app.logs import configure_logging

    configure_logging(settings.log_level)


def register_database(app: Flask, settings: Settings, engine: Engine | None) -> Offload:
    from app import db, extension

    engine = engine or db.make_engine(
        settings.database_url,
        busy_timeout=settings.database_busy_timeout,
        socket_timeout=settings.database_timeout,
        **db.pool_options(
            settings.database_url,
            size=settings.web_database_pool_size,
            timeout=settings.database_pool_timeout,
        ),
    )
    offload = extension.Offload(settings, engine, db.make_session_factory(engine))
    extension.init_app(app, offload)
    return offload


def register_rate_limits(offload: Offload) -> None:
    from app.ratelimit import make_rate_limiter

    offload.rate_limiter = make_rate_limiter(offload.settings, offload.engine)


def register_dispatcher(
    offload: Offload,
    publisher: Publisher | None,
    email_sender: Sender[EmailJob] | None,
    sms_sender: Sender[SmsJob] | None,
) -> None:
    from app.dispatch import Dispatcher
    from app.ledger import QueuedMarker
    from app.messaging import PikaPublisher
    from services.email import SmtpEmailSender
    from services.sms import HttpSmsSender

    settings = offload.settings
    offload.dispatcher = Dispatcher(
        email_sender=email_sender or SmtpEmailSender.from_settings(settings),
        sms_sender=sms_sender or HttpSmsSender.from_settings(settings),
        publisher=publisher
        or PikaPublisher(
            settings.amqp_url,
            retry_delays_ms=settings.retry_delays_ms,
            queue_type=settings.queue_type,
        ),
        publish_timeout=settings.publish_timeout,
        queued_marker=QueuedMarker(
            offload.sessions,
            interval=settings.queued_mark_interval,
            busy_timeout=settings.database_busy_timeout,
        ),
        inline_lease_seconds=settings.inline_send_seconds,
        relay_grace_seconds=settings.relay_grace_seconds,
    )


def register_blueprints(app: Flask) -> None:
    from app import api, compare, health, ops, web
    from app.security import csrf

    app.register_blueprint(ops.bp)
    app.register_blueprint(api.bp)
    app.register_blueprint(web.bp)
    app.register_blueprint(health.bp)
    app.register_blueprint(compare.bp)
    csrf.exempt(api.bp)
    csrf.exempt(health.bp)
    api.register_error_handlers(app)


def register_security(app: Flask) -> None:
    from app import security

    security.init_app(app)
