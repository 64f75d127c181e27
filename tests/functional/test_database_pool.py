"""The web's connection pool is sized to its greenlets; a wait past the pool timeout is a 503."""

import webtest

from app import create_app
from app.extension import offload
from app.senders import RecordingSender

ADA = {"name": "Ada Lovelace", "email": "ada@example.com", "phone": "+44 7911 123456"}


def make_app(settings, publisher, **overrides):
    return create_app(
        settings.with_overrides(**overrides),
        publisher=publisher,
        email_sender=RecordingSender(),
        sms_sender=RecordingSender(),
    )


def test_web_pool_is_sized_to_the_greenlet_pool(settings, publisher):
    app = make_app(settings, publisher, web_pool_size=37)
    pool = offload(app).engine.pool
    assert pool.size() == 37 and pool._max_overflow == 0  # type: ignore[attr-defined]
    offload(app).engine.dispose()


def test_waiting_past_the_pool_timeout_answers_503_with_retry_after(settings, publisher):
    app = make_app(settings, publisher, database_pool_size=1, database_pool_timeout=0.05)
    engine = offload(app).engine
    testapp = webtest.TestApp(app)
    form = testapp.get("/register").forms["register-form"]
    with engine.connect():  # the only connection, held by "another request"
        api = testapp.post_json("/api/users?mode=serial", ADA, status=503)
        assert api.json["error"] == "service_unavailable"
        assert int(api.headers["Retry-After"]) >= 1
        form["name"], form["email"], form["phone"] = ADA["name"], ADA["email"], ADA["phone"]
        page = form.submit(status=503)
        assert page.content_type == "text/html"
        assert int(page.headers["Retry-After"]) >= 1
    # The connection back in the pool, the same registration goes through.
    testapp.post_json("/api/users?mode=serial", ADA, status=201)
    engine.dispose()
