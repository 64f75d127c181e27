"""Small helpers for WebTest tests that build their own app (other settings than the fixture's)."""

from __future__ import annotations

import webtest

from app import create_app
from app.senders import RecordingSender

ADA = {"name": "Ada Lovelace", "email": "ada@example.com", "phone": "+44 7911 123456"}
# The client address WebTest requests come from, so the rate limits have one to count.
HOME = {"REMOTE_ADDR": "203.0.113.7"}


def make_testapp(settings, publisher, *, extra_environ=None, **overrides):
    application = create_app(
        settings.with_overrides(**overrides),
        publisher=publisher,
        email_sender=RecordingSender(),
        sms_sender=RecordingSender(),
    )
    return webtest.TestApp(application, extra_environ=extra_environ or dict(HOME))


def register(testapp, payload=None, status=201):
    return testapp.post_json("/api/users?mode=serial", payload or ADA, status=status)


def register_in_browser(testapp, payload=None):
    """Register through the form: this browser's session then opens /status."""
    form = testapp.get("/register").forms["register-form"]
    for field, value in (payload or ADA).items():
        form[field] = value
    form["mode"] = "serial"
    return form.submit(status=303)


def status_url(response):
    """The API status URL a registration answered with (it holds the status token)."""
    return response.headers["Location"]
