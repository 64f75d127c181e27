"""The secret key: refused when it is the development default in production, used when real."""

from __future__ import annotations

import pytest

from app import create_app
from app.config import DEFAULT_SECRET_KEY, ConfigError, Settings
from app.extension import offload


def test_create_app_refuses_the_default_secret_key_in_production(database_url, publisher):
    settings = Settings(environment="production", database_url=database_url)
    assert settings.secret_key == DEFAULT_SECRET_KEY
    with pytest.raises(ConfigError, match="SECRET_KEY"):
        create_app(settings, publisher=publisher)


def test_production_starts_with_a_real_secret_key(database_url, publisher):
    settings = Settings(environment="production", database_url=database_url, secret_key="x" * 64)
    app = create_app(settings, publisher=publisher)
    offload(app).engine.dispose()
