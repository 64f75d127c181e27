"""The secret key: refused when it is the development default in production, used when real."""

from __future__ import annotations

import re

import pytest
import webtest

from app import create_app
from app.config import DEFAULT_SECRET_KEY, ConfigError, Settings
from app.extension import offload
from app.senders import RecordingSender
from app.verification import InvalidToken, read_email_token
from tests.functional.helpers import HOME, register


def test_create_app_refuses_the_default_secret_key_in_production(database_url, publisher):
    settings = Settings(environment="production", database_url=database_url)
    assert settings.secret_key == DEFAULT_SECRET_KEY
    with pytest.raises(ConfigError, match="SECRET_KEY"):
        create_app(settings, publisher=publisher)


def test_production_starts_with_a_real_secret_key(database_url, publisher):
    """It starts, registers, and signs with the key it was given, not the development one."""
    secret = "x" * 64
    # In production only DISPATCH_MODE decides the mode (the helper asks for serial).
    settings = Settings(
        environment="production",
        database_url=database_url,
        secret_key=secret,
        dispatch_mode="serial",
    )
    email_sender = RecordingSender()
    app = create_app(
        settings, publisher=publisher, email_sender=email_sender, sms_sender=RecordingSender()
    )
    try:
        testapp = webtest.TestApp(app, extra_environ=dict(HOME))
        status = register(testapp).headers["Location"]
        token = re.search(r"/verify-email/(\S+)", email_sender.sent[0].text).group(1)
        assert read_email_token(secret, token, max_age=60).verification_id
        with pytest.raises(InvalidToken):
            read_email_token(DEFAULT_SECRET_KEY, token, max_age=60)
        page = testapp.get(f"/verify-email/{token}", status=200)
        page.forms["verify-email-form"].submit()
        assert testapp.get(status).json["user"]["email_verified"] is True
    finally:
        offload(app).engine.dispose()
