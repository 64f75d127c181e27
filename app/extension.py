"""What the factory built for one Flask app, behind one typed accessor, and the request's session.

Views reach the settings, the dispatcher and the rate limiter through `offload()` instead of
string lookups in `current_app.extensions`, so a typo is a type error rather than a KeyError at
request time. This module is the web side's only link to the database session: the workers use
`app.db` directly and never import Flask.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from flask import Flask, current_app, g
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session, sessionmaker

from app.config import Settings

if TYPE_CHECKING:
    from app.dispatch import Dispatcher
    from app.ratelimit import RateLimiter

EXTENSION_KEY = "offload"


@dataclass
class Offload:
    """The app's infrastructure; the factory fills it in, step by step, before any request."""

    settings: Settings
    engine: Engine
    sessions: sessionmaker[Session]
    dispatcher: Dispatcher | None = None
    rate_limiter: RateLimiter | None = None

    def require_dispatcher(self) -> Dispatcher:
        assert self.dispatcher is not None, "create_app() registers the dispatcher"
        return self.dispatcher

    def require_rate_limiter(self) -> RateLimiter:
        assert self.rate_limiter is not None, "create_app() registers the rate limiter"
        return self.rate_limiter


def init_app(app: Flask, extension: Offload) -> None:
    app.extensions[EXTENSION_KEY] = extension
    app.teardown_appcontext(_close_session)


def offload(app: Flask | None = None) -> Offload:
    """The infrastructure of `app`, or of the current app inside a request."""
    target = app if app is not None else current_app
    extension: Offload = target.extensions[EXTENSION_KEY]
    return extension


def get_session() -> Session:
    """The request's session, opened on first use and closed on teardown."""
    if "db_session" not in g:
        g.db_session = offload().sessions()
    session: Session = g.db_session
    return session


def _close_session(_exc: BaseException | None) -> None:
    session = g.pop("db_session", None)
    if session is None:
        return
    try:
        session.close()
    except DBAPIError as exc:
        if not exc.connection_invalidated:
            raise
        # The rollback met a lost connection (the server restarting): the server has dropped
        # the transaction already and the request has its answer. Raised from the teardown, the
        # error would replace that answer: a 500 from gunicorn, or, a bare reset, no answer at
        # all. invalidate() hands the connection back to the pool without another rollback.
        session.invalidate()
        current_app.logger.warning("database connection lost at teardown: %s", exc.orig)
