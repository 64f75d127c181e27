"""Settings that would run insecurely or break a worker are refused at start, named."""

import pytest

from app.config import ConfigError, is_loopback_url, load_settings
from tests.fresh_process import run_python

STRONG = "k" * 32


@pytest.mark.parametrize(
    "base_url", ["https://offload.example", "http://10.0.0.5:8000", "http://[2001:db8::1]/"]
)
def test_default_secret_key_is_refused_off_loopback_even_in_development(base_url):
    with pytest.raises(ConfigError, match="SECRET_KEY"):
        load_settings({"BASE_URL": base_url})


@pytest.mark.parametrize(
    "base_url", ["http://127.0.0.1:8000", "http://localhost:8000", "http://[::1]:8000"]
)
def test_default_secret_key_is_fine_for_loopback_development(base_url):
    assert is_loopback_url(base_url)
    load_settings({"BASE_URL": base_url})


@pytest.mark.parametrize(
    "environ",
    [
        {"BASE_URL": "https://offload.example", "SECRET_KEY": "k" * 31},
        {"OFFLOAD_ENV": "production", "SECRET_KEY": "k" * 31},
    ],
)
def test_short_secret_key_is_refused_outside_loopback_development(environ):
    with pytest.raises(ConfigError, match="32 bytes"):
        load_settings(environ)


def test_a_32_byte_key_is_accepted_anywhere():
    load_settings({"BASE_URL": "https://offload.example", "SECRET_KEY": STRONG})
    load_settings({"OFFLOAD_ENV": "production", "SECRET_KEY": STRONG})


@pytest.mark.parametrize("raw", ["", " , ", "0", "1000,-5"])
def test_retry_delays_must_hold_a_positive_delay(raw):
    with pytest.raises(ConfigError, match="RETRY_DELAYS_MS"):
        load_settings({"RETRY_DELAYS_MS": raw})


def test_smtp_login_without_tls_is_refused_unless_allowed():
    login = {"SMTP_USERNAME": "mailer", "SMTP_PASSWORD": "pw"}
    with pytest.raises(ConfigError, match="SMTP_STARTTLS"):
        load_settings(login)
    load_settings({**login, "SMTP_STARTTLS": "true"})
    assert load_settings({**login, "SMTP_ALLOW_INSECURE_LOGIN": "true"}).smtp_allow_insecure_login


def test_the_smtp_sender_itself_refuses_a_login_without_tls():
    from services.email import SmtpEmailSender

    with pytest.raises(ValueError, match="in clear"):
        SmtpEmailSender("127.0.0.1", 25, mail_from="a@b.c", username="u", password="p")
    SmtpEmailSender("127.0.0.1", 25, mail_from="a@b.c", username="u", allow_insecure_login=True)


def test_a_sweep_bound_shorter_than_a_retry_is_refused():
    # A row waiting out its longest retry delay (and a send lease) is not lost: not swept.
    with pytest.raises(ConfigError, match="RELAY_SWEEP_AFTER_SECONDS"):
        load_settings({"RETRY_DELAYS_MS": "1000,120000", "RELAY_SWEEP_AFTER_SECONDS": "130"})
    load_settings({"RETRY_DELAYS_MS": "1000,120000", "RELAY_SWEEP_AFTER_SECONDS": "151"})


@pytest.mark.parametrize("url", ["127.0.0.1:1026/messages", "ftp://gateway/messages", "http://"])
def test_an_sms_gateway_url_that_is_no_http_url_is_refused(url):
    with pytest.raises(ConfigError, match="SMS_GATEWAY_URL"):
        load_settings({"SMS_GATEWAY_URL": url})


@pytest.mark.parametrize("raw", ["-1", "20"])
def test_a_worker_niceness_outside_0_to_19_is_refused(raw):
    with pytest.raises(ConfigError, match="WORKER_NICE"):
        load_settings({"WORKER_NICE": raw})


def test_a_worker_lowers_its_own_cpu_priority_by_worker_nice():
    probe = (
        "import os; from services.workers import yield_cpu_to_the_web; "
        "before = os.nice(0); yield_cpu_to_the_web(3); print(os.nice(0) - before)"
    )
    out = run_python(probe).stdout
    assert out.strip() == "3"
