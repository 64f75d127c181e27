"""Settings from the environment: every variable, its field, its type, and its refusals."""

import re
from dataclasses import fields

import pytest

from app.config import _VARIABLES, DEFAULT_SECRET_KEY, ConfigError, Settings, load_settings

# Every variable load_settings reads: (variable, field, sample, value, bad sample). The value is
# never the default, so a variable that is not read, or lands in another field, fails its row.
# The bad sample is None where load_settings accepts any text: free-form strings, and the rate
# limits, which create_app parses and refuses (tests/functional/test_rate_limits.py).
WEBHOOK_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
VARIABLES = [
    ("OFFLOAD_ENV", "environment", "staging", "staging", None),
    (
        "SECRET_KEY",
        "secret_key",
        "another-secret-of-32-bytes-or-more",
        "another-secret-of-32-bytes-or-more",
        None,
    ),
    ("DATABASE_URL", "database_url", "postgresql://db/offload", "postgresql://db/offload", None),
    ("DATABASE_BUSY_TIMEOUT", "database_busy_timeout", "2.5", 2.5, "soon"),
    ("AMQP_URL", "amqp_url", "amqp://u:p@mq:5672/v", "amqp://u:p@mq:5672/v", None),
    ("DISPATCH_MODE", "dispatch_mode", "serial", "serial", "fast"),
    ("HOST", "host", "0.0.0.0", "0.0.0.0", None),
    ("PORT", "port", "9000", 9000, "http"),
    ("BASE_URL", "base_url", "https://offload.example", "https://offload.example", None),
    ("LOG_LEVEL", "log_level", "DEBUG", "DEBUG", None),
    ("BENCH_MODES", "bench_modes", "yes", True, "maybe"),
    ("BENCH_RESULTS_DIR", "bench_results_dir", "/tmp/bench", "/tmp/bench", None),
    ("WEB_POOL_SIZE", "web_pool_size", "250", 250, "many"),
    ("WEB_WORKERS", "web_workers", "4", 4, "2.5"),
    ("WEB_HEADER_TIMEOUT", "web_header_timeout", "3", 3.0, "0"),
    ("WEB_IDLE_TIMEOUT", "web_idle_timeout", "4", 4.0, "-1"),
    ("DATABASE_POOL_SIZE", "database_pool_size", "40", 40, "-1"),
    ("DATABASE_POOL_TIMEOUT", "database_pool_timeout", "2", 2.0, "0"),
    ("DATABASE_TIMEOUT", "database_timeout", "12.5", 12.5, "0"),
    ("TCP_NODELAY", "tcp_nodelay", "off", False, "nagle"),
    ("HUB_BLOCK_REPORT_MS", "hub_block_report_ms", "20", 20.0, "some"),
    ("SINK_DELAY_MS", "sink_delay_ms", "7", 7.0, "slow"),
    ("MAX_BODY_BYTES", "max_body_bytes", "1024", 1024, "16k"),
    ("PUBLISH_TIMEOUT", "publish_timeout", "0.5", 0.5, "soon"),
    ("QUEUED_MARK_INTERVAL", "queued_mark_interval", "0.2", 0.2, "often"),
    ("SMTP_HOST", "smtp_host", "mail.example", "mail.example", None),
    ("SMTP_PORT", "smtp_port", "2525", 2525, "smtp"),
    ("SMTP_USERNAME", "smtp_username", "mailer", "mailer", None),
    ("SMTP_PASSWORD", "smtp_password", "hunter2", "hunter2", None),
    ("SMTP_STARTTLS", "smtp_starttls", "on", True, "maybe"),
    ("SMTP_ALLOW_INSECURE_LOGIN", "smtp_allow_insecure_login", "yes", True, "maybe"),
    ("SMTP_TIMEOUT", "smtp_timeout", "7", 7.0, "7s"),
    ("MAIL_FROM", "mail_from", "Ada <ada@example.com>", "Ada <ada@example.com>", None),
    ("SMS_GATEWAY_URL", "sms_gateway_url", "http://sms/send", "http://sms/send", None),
    ("SMS_TIMEOUT", "sms_timeout", "2.5", 2.5, "never"),
    ("METRICS_PORT", "metrics_port", "9100", 9100, "prometheus"),
    ("CONSUMER_CONCURRENCY", "consumer_concurrency", "3", 3, "0"),
    ("CONSUMER_PREFETCH", "consumer_prefetch", "7", 7, "0"),
    ("WORKER_NICE", "worker_nice", "5", 5, "20"),
    ("QUEUE_TYPE", "queue_type", "quorum", "quorum", "mirrored"),
    ("MAX_ATTEMPTS", "max_attempts", "9", 9, "forever"),
    ("RETRY_DELAYS_MS", "retry_delays_ms", "100, 200,300", (100, 200, 300), "100,soon"),
    ("RELAY_INTERVAL", "relay_interval", "0.2", 0.2, "often"),
    ("RELAY_BATCH_SIZE", "relay_batch_size", "50", 50, "all"),
    ("RELAY_GRACE_SECONDS", "relay_grace_seconds", "45", 45.0, "a while"),
    ("RELAY_SWEEP_AFTER_SECONDS", "relay_sweep_after_seconds", "1200", 1200.0, "0"),
    ("EVENT_RETENTION_DAYS", "event_retention_days", "7", 7, "0"),
    ("UNVERIFIED_EXPIRY_SECONDS", "unverified_expiry_seconds", "3600", 3600, "0"),
    ("SMS_BUDGET_GLOBAL", "sms_budget_global", "500/hour", "500/hour", "lots"),
    ("SMS_BUDGET_PER_COUNTRY", "sms_budget_per_country", "50/hour", "50/hour", "5 per hour"),
    ("SMS_BUDGET_PER_NUMBER", "sms_budget_per_number", "3/day", "3/day", "0/day"),
    ("SMS_ALLOWED_COUNTRIES", "sms_allowed_countries", "us, ca", ("US", "CA"), "USA"),
    ("ALLOW_CLIENT_MODE", "allow_client_mode", "false", False, "sometimes"),
    ("RESEND_MAX", "resend_max", "3", 3, "-1"),
    ("RESEND_COOLDOWN_SECONDS", "resend_cooldown_seconds", "30", 30, "soon"),
    ("SEND_LEASE_SECONDS", "send_lease_seconds", "12.5", 12.5, "long"),
    ("RATE_LIMIT_ENABLED", "rate_limit_enabled", "0", False, "sometimes"),
    ("RATE_LIMIT_REGISTRATIONS", "rate_limit_registrations", "3/minute", "3/minute", None),
    ("RATE_LIMIT_VERIFICATIONS", "rate_limit_verifications", "5/second", "5/second", None),
    ("RATE_LIMIT_TRUSTED_PROXIES", "rate_limit_trusted_proxies", "2", 2, "one"),
    (
        "WEBHOOK_URLS",
        "webhook_urls",
        "https://hooks.example/a, http://10.0.0.9/b",
        ("https://hooks.example/a", "http://10.0.0.9/b"),
        "ftp://hooks.example/a",
    ),
    ("WEBHOOK_SECRET", "webhook_secret", WEBHOOK_SECRET, WEBHOOK_SECRET, "whsec_not base64!"),
    ("CLUSTER_TLS_PORT", "cluster_tls_port", "9443", 9443, "https"),
    ("OPS_TOKEN", "ops_token", "an-operator-token", "an-operator-token", None),
    ("PROMETHEUS_MULTIPROC_DIR", "prometheus_multiproc_dir", "/run/m", "/run/m", None),
]
ROWS = {row[0]: row for row in VARIABLES}
# Every row is read on top of this: a key long enough for any BASE_URL (the default key is
# refused away from loopback), so each row changes only what it names.
BASE = {"SECRET_KEY": "a-test-secret-of-32-bytes-or-more"}
# Variables that are refused on their own, and what they need beside them.
CONTEXT = {
    "SMTP_USERNAME": ({"SMTP_STARTTLS": "on"}, {"smtp_starttls"}),
    "WEBHOOK_URLS": ({"WEBHOOK_SECRET": WEBHOOK_SECRET}, {"webhook_secret"}),
}
DEFAULTS = Settings()


def names(variable):
    """A pattern for the variable as a whole word: SMTP_PORT does not name PORT."""
    return rf"\b{re.escape(variable)}\b"


def test_defaults_without_environment():
    assert load_settings({}) == DEFAULTS
    assert DEFAULTS.dispatch_mode == "queued"
    assert DEFAULTS.database_url.startswith("sqlite:///")
    assert DEFAULTS.tcp_nodelay is True


def test_every_variable_has_a_row_here():
    """A variable added to app/config.py without a row in VARIABLES fails here (and without a
    row in the README's table, in tests/unit/test_docs.py)."""
    assert set(ROWS) == set(_VARIABLES)
    assert len(ROWS) == len(VARIABLES)


@pytest.mark.parametrize(("variable", "field", "sample", "value", "_bad"), VARIABLES)
def test_each_variable_sets_its_field_and_nothing_else(variable, field, sample, value, _bad):
    baseline = load_settings(BASE)
    context, context_fields = CONTEXT.get(variable, ({}, set()))
    settings = load_settings({**BASE, **context, variable: sample})
    assert getattr(settings, field) == value
    assert type(getattr(settings, field)) is type(value)  # "7" is 7.0 for a float, not 7
    assert value != getattr(baseline, field), "the sample must differ from the default"
    changed = {
        f.name for f in fields(Settings) if getattr(settings, f.name) != getattr(baseline, f.name)
    }
    # PORT without BASE_URL moves the links too (see below).
    assert changed == {field} | context_fields | ({"base_url"} if variable == "PORT" else set())


@pytest.mark.parametrize(
    ("variable", "bad"), [(row[0], row[4]) for row in VARIABLES if row[4] is not None]
)
def test_a_bad_value_names_its_variable(variable, bad):
    with pytest.raises(ConfigError, match=names(variable)):
        load_settings({**BASE, variable: bad})


@pytest.mark.parametrize("text", ["1", "true", "Yes", " ON "])
def test_true_spellings(text):
    assert load_settings({"TCP_NODELAY": "false", "BENCH_MODES": text}).bench_modes is True


@pytest.mark.parametrize("text", ["0", "false", "No", "off", ""])
def test_false_spellings(text):
    assert load_settings({"TCP_NODELAY": text}).tcp_nodelay is False


def test_port_without_base_url_moves_the_links_too():
    assert load_settings({"PORT": "9000"}).base_url == "http://127.0.0.1:9000"
    away = {**BASE, "HOST": "10.0.0.5", "PORT": "9000"}
    assert load_settings(away).base_url == "http://10.0.0.5:9000"


def test_base_url_wins_over_port():
    settings = load_settings({**BASE, "PORT": "9000", "BASE_URL": "https://offload.example"})
    assert settings.base_url == "https://offload.example"


@pytest.mark.parametrize("environ", [{}, {"SECRET_KEY": DEFAULT_SECRET_KEY}])
def test_production_refuses_the_default_secret(environ):
    with pytest.raises(ConfigError, match=names("SECRET_KEY")):
        load_settings({"OFFLOAD_ENV": "production", **environ})


def test_production_accepts_a_real_secret():
    secret = "s3cr3t-from-a-vault-32-bytes-or-more"
    settings = load_settings({"OFFLOAD_ENV": "production", "SECRET_KEY": secret})
    assert settings.environment == "production"
    assert settings.secret_key == secret


def test_webhook_urls_need_a_secret():
    with pytest.raises(ConfigError, match=names("WEBHOOK_SECRET")):
        load_settings({**BASE, "WEBHOOK_URLS": "https://hooks.example/a"})
