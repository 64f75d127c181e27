import pytest

from app.config import DEFAULT_SECRET_KEY, ConfigError, load_settings


def test_defaults_without_environment():
    settings = load_settings({})
    assert settings.dispatch_mode == "queued"
    assert settings.database_url.startswith("sqlite:///")
    assert settings.tcp_nodelay is True


def test_every_variable_is_parsed():
    settings = load_settings(
        {
            "DISPATCH_MODE": "serial",
            "SMTP_PORT": "2525",
            "SMTP_STARTTLS": "yes",
            "PUBLISH_TIMEOUT": "0.5",
            "RETRY_DELAYS_MS": "100, 200,300",
            "CONSUMER_CONCURRENCY": "3",
        }
    )
    assert settings.dispatch_mode == "serial"
    assert settings.smtp_port == 2525
    assert settings.smtp_starttls is True
    assert settings.publish_timeout == 0.5
    assert settings.retry_delays_ms == (100, 200, 300)
    assert settings.consumer_concurrency == 3


def test_port_without_base_url_moves_the_links_too():
    assert load_settings({"PORT": "9000"}).base_url == "http://127.0.0.1:9000"


@pytest.mark.parametrize(
    ("environ", "variable"),
    [
        ({"DISPATCH_MODE": "fast"}, "DISPATCH_MODE"),
        ({"SMTP_PORT": "smtp"}, "SMTP_PORT"),
        ({"SMTP_STARTTLS": "maybe"}, "SMTP_STARTTLS"),
        ({"PUBLISH_TIMEOUT": "soon"}, "PUBLISH_TIMEOUT"),
        ({"OFFLOAD_ENV": "production"}, "SECRET_KEY"),
    ],
)
def test_bad_values_name_their_variable(environ, variable):
    with pytest.raises(ConfigError, match=variable):
        load_settings(environ)


def test_production_accepts_a_real_secret():
    settings = load_settings(
        {"OFFLOAD_ENV": "production", "SECRET_KEY": "s3cr3t-from-a-vault-32-bytes-or-more"}
    )
    assert settings.secret_key != DEFAULT_SECRET_KEY
