"""Settings: the one place that reads the environment.

Every process (web, consumers, relay, migrations, benchmark) calls `load_settings()` once at
start-up and passes the frozen result down. Nothing reads `os.environ` at import time, so tests
build a `Settings` by hand and nothing leaks between them.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any
from urllib.parse import urlsplit

DISPATCH_MODES = ("serial", "parallel", "queued")
# The benchmark's baseline: the same DB write, no notification at all. Only when BENCH_MODES is on.
BASELINE_MODE = "insert-only"
DEFAULT_SECRET_KEY = "dev-only-not-secret"  # noqa: S105 - refused in production, see validate()
# Outside loopback development the key signs links that reach the internet: 256 bits at least.
MIN_SECRET_KEY_BYTES = 32


class ConfigError(ValueError):
    """A setting is missing or malformed; the message names the variable."""


@dataclass(frozen=True)
class Settings:
    environment: str = "development"
    secret_key: str = DEFAULT_SECRET_KEY
    database_url: str = "sqlite:///instance/offload.db"
    # SQLite: how long a writer waits for another's lock before the request answers 503.
    database_busy_timeout: float = 5.0
    # One broker, or a cluster's nodes separated by commas: clients connect to the first that
    # answers and move to another when it goes away.
    amqp_url: str = "amqp://guest:guest@127.0.0.1:5672/%2F"
    dispatch_mode: str = "queued"
    host: str = "127.0.0.1"
    port: int = 8000
    base_url: str = "http://127.0.0.1:8000"
    log_level: str = "INFO"
    bench_modes: bool = False
    bench_results_dir: str = "bench-results"
    web_pool_size: int = 1000
    # python wsgi.py: how long a connection may take to send a request's line and headers, and
    # how long it may sit idle (before a request, or in any one read or write) before it is
    # closed, so idle or trickling clients cannot hold every greenlet of the pool.
    web_header_timeout: float = 10.0
    web_idle_timeout: float = 15.0
    # Database connections of a web process; 0 means WEB_POOL_SIZE (one per greenlet, so none
    # waits). Lower it to fit PostgreSQL's max_connections: a request that waits longer than
    # DATABASE_POOL_TIMEOUT for a connection answers 503 with Retry-After.
    database_pool_size: int = 0
    database_pool_timeout: float = 5.0
    # PostgreSQL: how long a connection waits to connect, or for any reply, before it is given
    # up as lost (503). Without it a server that accepts and never answers holds a request for
    # ever. Migrations run without it (a long ALTER is no lost server).
    database_timeout: float = 30.0
    web_workers: int = 2
    tcp_nodelay: bool = True
    # Count event-loop stalls longer than this many ms (gevent's monitor thread); 0 is off.
    hub_block_report_ms: float = 0.0
    max_body_bytes: int = 16 * 1024
    # How long a request may wait for the broker's publisher confirms before it answers anyway
    # and leaves the jobs to the outbox relay. Under load the wait includes the time the process
    # spends on the other requests in flight (50 at once x ~3.5 ms of CPU each), not only the
    # broker's round trip, so a budget much below that sends healthy jobs the slow way.
    publish_timeout: float = 1.0
    # How long the web process gathers confirmed publishes before marking their rows `queued`
    # in one UPDATE (0: mark each registration's rows at once). Keep it well below
    # RELAY_GRACE_SECONDS, which leaves pending rows to the request that wrote them.
    queued_mark_interval: float = 0.05
    smtp_host: str = "127.0.0.1"
    smtp_port: int = 1025
    smtp_username: str = ""
    smtp_password: str = ""
    smtp_starttls: bool = False
    # SMTP_USERNAME without SMTP_STARTTLS sends the password in clear: refused unless this says
    # so (a relay on the same host, say).
    smtp_allow_insecure_login: bool = False
    smtp_timeout: float = 10.0
    mail_from: str = "Offload <no-reply@offload.example>"
    sms_gateway_url: str = "http://127.0.0.1:1026/messages"
    sms_timeout: float = 10.0
    # Consumers and the relay serve Prometheus metrics on this port when it is not 0.
    metrics_port: int = 0
    # Sends in flight per consumer: by Little's law a consumer keeping up with R jobs a second
    # whose server answers in L seconds needs R x L of them (500/s x 50 ms = 25). With too few
    # the queue grows under load however idle the CPU, and the ledger's batches stay small.
    consumer_concurrency: int = 50
    consumer_prefetch: int = 100
    # How much nicer (lower CPU priority) the workers run than they were started: on a machine
    # they share with the web, a request then waits less for a core behind work that can wait.
    # 19, the lowest priority: at 10 a worker still weighs 110 against the web's 1024 (a tenth
    # of a shared core), at 19 it weighs 15. `make bench` quick runs, c=50 queued, seven pairs:
    # 619 requests a second on average at 10, 657 at 19 (19 ahead in six of the seven pairs).
    worker_nice: int = 19
    # "quorum" for a RabbitMQ cluster (replicated queues); "classic" on a single node.
    queue_type: str = "classic"
    max_attempts: int = 5
    retry_delays_ms: tuple[int, ...] = (1_000, 5_000, 30_000, 120_000)
    relay_interval: float = 1.0
    relay_batch_size: int = 200
    # A pending outbox row younger than this belongs to the request that wrote it; the relay
    # leaves it alone so the normal path is not published twice. Longer than the longest
    # inline send (SMTP_TIMEOUT + SMS_TIMEOUT, one after the other in serial mode).
    relay_grace_seconds: float = 30.0
    # The relay republishes a row left `queued` this long (its message lost by the broker).
    # Longer than the longest retry delay plus the send lease; a row waiting behind a longer
    # backlog is republished too, which the consumers' ledger check makes harmless.
    relay_sweep_after_seconds: float = 900.0
    # Published events, and webhook deliveries that ended (delivered or failed), are deleted
    # once this old: the outbox and the webhook ledger would otherwise grow for ever.
    event_retention_days: int = 30
    # How long a consumer owns a notification while sending it; longer than any send may take.
    send_lease_seconds: float = 30.0
    verification_max_age: int = 48 * 3600
    # Resends of the link or code (app/resend.py): at most this many per user, both channels
    # together, and at least this long apart.
    resend_max: int = 5
    resend_cooldown_seconds: int = 60
    # A registration whose email and phone are not both verified this long after it was made
    # gives way to a new registration of the same address or number (no squatting).
    unverified_expiry_seconds: int = 48 * 3600
    sms_code_max_age: int = 15 * 60
    sms_code_max_attempts: int = 5
    # Per client address, fixed windows counted in the database (shared by every worker).
    # The benchmark and the test stack turn it off: they register thousands a minute from one
    # address.
    rate_limit_enabled: bool = True
    rate_limit_registrations: str = "10/minute"
    rate_limit_verifications: str = "20/minute"
    # How many reverse proxies in front of the app append to X-Forwarded-For; 0 trusts none and
    # uses the socket's peer address.
    rate_limit_trusted_proxies: int = 0
    # SMS budgets ("N/minute", "N/hour", "N/day"; empty: none), counted in the registration's
    # transaction; an SMS over one is written `held` until an operator releases it.
    sms_budget_global: str = ""
    sms_budget_per_country: str = ""
    sms_budget_per_number: str = ""
    # ISO 3166 region codes ("US,CA") whose numbers may register; empty: any country.
    sms_allowed_countries: tuple[str, ...] = ()
    # Whether clients may pick the dispatch mode (`?mode=`, the form's menu); unset: only in
    # development. Otherwise DISPATCH_MODE alone decides what each registration costs.
    allow_client_mode: bool | None = None
    # The local harness only (devstack): how long each SMTP and SMS sink takes per message.
    sink_delay_ms: float = 50.0
    # Endpoints that receive the user.* events as signed webhooks (services/webhooks.py), each
    # through its own queue; empty: no webhooks. The secret signs them (Standard Webhooks:
    # `whsec_` and base64), and is required when there is an endpoint.
    webhook_urls: tuple[str, ...] = ()
    webhook_secret: str = ""
    # `make cluster` only: the port nginx terminates TLS on.
    cluster_tls_port: int = 8443
    # The operator page /ops answers only with this token (header or ?token=); empty: no page.
    ops_token: str = ""
    # gunicorn: the folder where prometheus-client's multiprocess mode keeps each worker's
    # metrics (prometheus-client reads this variable itself); emptied when gunicorn starts.
    prometheus_multiproc_dir: str = ""

    def validate(self) -> Settings:
        if self.dispatch_mode not in DISPATCH_MODES:
            raise ConfigError(
                f"DISPATCH_MODE must be one of {', '.join(DISPATCH_MODES)}, "
                f"not {self.dispatch_mode!r}"
            )
        loopback = is_loopback_url(self.base_url)
        if self.secret_key == DEFAULT_SECRET_KEY and (
            self.environment == "production" or not loopback
        ):
            raise ConfigError(
                "SECRET_KEY must be set to a random value in production and whenever BASE_URL "
                f"is not a loopback address (BASE_URL is {self.base_url!r})"
            )
        if (self.environment != "development" or not loopback) and len(
            self.secret_key.encode()
        ) < MIN_SECRET_KEY_BYTES:
            raise ConfigError(
                f"SECRET_KEY must be at least {MIN_SECRET_KEY_BYTES} bytes outside loopback "
                "development (e.g. python -c 'import secrets; print(secrets.token_urlsafe(32))')"
            )
        if not self.retry_delays_ms or min(self.retry_delays_ms) < 1:
            raise ConfigError(
                "RETRY_DELAYS_MS must list at least one delay in milliseconds, each at least 1 "
                "(e.g. 1000,5000,30000)"
            )
        if self.smtp_username and not self.smtp_starttls and not self.smtp_allow_insecure_login:
            raise ConfigError(
                "SMTP_USERNAME without SMTP_STARTTLS=true would send the password in clear; "
                "set SMTP_STARTTLS=true, or SMTP_ALLOW_INSECURE_LOGIN=true if that is intended"
            )
        if self.database_pool_size < 0 or self.database_pool_timeout <= 0:
            raise ConfigError("DATABASE_POOL_SIZE must be 0 or more, DATABASE_POOL_TIMEOUT above 0")
        if self.database_timeout <= 0:
            raise ConfigError(f"DATABASE_TIMEOUT must be above 0, not {self.database_timeout!r}")
        if self.web_header_timeout <= 0 or self.web_idle_timeout <= 0:
            raise ConfigError("WEB_HEADER_TIMEOUT and WEB_IDLE_TIMEOUT must be above 0")
        if not any(url.strip() for url in self.amqp_url.split(",")):
            raise ConfigError("AMQP_URL must name at least one broker (amqp://...)")
        if self.queue_type not in ("classic", "quorum"):
            raise ConfigError(f"QUEUE_TYPE must be classic or quorum, not {self.queue_type!r}")
        if not 0 <= self.queued_mark_interval < self.relay_grace_seconds:
            raise ConfigError(
                "QUEUED_MARK_INTERVAL must be at least 0 and below RELAY_GRACE_SECONDS, "
                f"not {self.queued_mark_interval!r}"
            )
        if not self.relay_grace_seconds > self.inline_send_seconds:
            raise ConfigError(
                "RELAY_GRACE_SECONDS must be longer than the longest inline send, "
                f"SMTP_TIMEOUT + SMS_TIMEOUT ({self.inline_send_seconds:g} s), "
                f"not {self.relay_grace_seconds!r}"
            )
        longest_wait = max(self.retry_delays_ms) / 1000 + self.send_lease_seconds
        if not self.relay_sweep_after_seconds > longest_wait:
            raise ConfigError(
                "RELAY_SWEEP_AFTER_SECONDS must be longer than the longest retry delay plus "
                f"SEND_LEASE_SECONDS ({longest_wait:g} s), not {self.relay_sweep_after_seconds!r}"
            )
        if self.event_retention_days < 1:
            raise ConfigError(
                f"EVENT_RETENTION_DAYS must be 1 or more, not {self.event_retention_days!r}"
            )
        if self.resend_max < 0 or self.resend_cooldown_seconds < 0:
            raise ConfigError("RESEND_MAX and RESEND_COOLDOWN_SECONDS must be 0 or more")
        if self.unverified_expiry_seconds < 1:
            raise ConfigError(
                "UNVERIFIED_EXPIRY_SECONDS must be at least 1, "
                f"not {self.unverified_expiry_seconds!r}"
            )
        for variable, budget in (
            ("SMS_BUDGET_GLOBAL", self.sms_budget_global),
            ("SMS_BUDGET_PER_COUNTRY", self.sms_budget_per_country),
            ("SMS_BUDGET_PER_NUMBER", self.sms_budget_per_number),
        ):
            if budget.strip():
                from app.counters import Rate

                Rate.parse(budget, setting=variable)
        for region in self.sms_allowed_countries:
            if not (
                len(region) == 2 and region.isascii() and region.isalpha() and region.isupper()
            ):
                raise ConfigError(
                    "SMS_ALLOWED_COUNTRIES must list ISO 3166 region codes (e.g. US,CA,GB), "
                    f"not {region!r}"
                )
        if self.consumer_concurrency < 1 or self.consumer_prefetch < 1:
            raise ConfigError("CONSUMER_CONCURRENCY and CONSUMER_PREFETCH must be at least 1")
        if not 0 <= self.worker_nice <= 19:
            raise ConfigError(f"WORKER_NICE must be from 0 to 19, not {self.worker_nice!r}")
        self._validate_webhooks()
        gateway = urlsplit(self.sms_gateway_url)
        if gateway.scheme not in ("http", "https") or not gateway.hostname:
            raise ConfigError(
                f"SMS_GATEWAY_URL must be an http(s) URL, not {self.sms_gateway_url!r}"
            )
        if not self.sink_delay_ms >= 0:  # also refuses nan
            raise ConfigError(f"SINK_DELAY_MS must be 0 or more, not {self.sink_delay_ms!r}")
        return self

    def _validate_webhooks(self) -> None:
        for url in self.webhook_urls:
            parts = urlsplit(url)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise ConfigError(f"WEBHOOK_URLS must list http(s) URLs, not {url!r}")
        if self.webhook_urls and not self.webhook_secret:
            raise ConfigError("WEBHOOK_SECRET is required when WEBHOOK_URLS is set")
        if self.webhook_secret and not webhook_secret_bytes(self.webhook_secret):
            raise ConfigError(
                "WEBHOOK_SECRET must be whsec_ followed by base64 (e.g. python -c 'import "
                'base64, secrets; print("whsec_" + base64.b64encode(secrets.token_bytes(32))'
                ".decode())')"
            )

    def with_overrides(self, **changes: Any) -> Settings:
        return replace(self, **changes).validate()

    @property
    def clients_choose_mode(self) -> bool:
        if self.allow_client_mode is not None:
            return self.allow_client_mode
        return self.environment == "development"

    @property
    def inline_send_seconds(self) -> float:
        """The longest a request's own sends may take (serial: one after the other)."""
        return self.smtp_timeout + self.sms_timeout

    @property
    def web_database_pool_size(self) -> int:
        return self.database_pool_size or self.web_pool_size


def webhook_secret_bytes(secret: str) -> bytes:
    """The HMAC key of a `whsec_<base64>` secret (Standard Webhooks); b"" if it is not one."""
    if not secret.startswith("whsec_"):
        return b""
    try:
        return base64.b64decode(secret.removeprefix("whsec_"), validate=True)
    except (binascii.Error, ValueError):
        return b""


def is_loopback_url(url: str) -> bool:
    """Whether `url` names this machine only: localhost, 127.0.0.0/8 or ::1."""
    host = (urlsplit(url).hostname or "").lower()
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _bool(raw: str, name: str) -> bool:
    value = raw.strip().lower()
    if value in {"1", "true", "yes", "on"}:
        return True
    if value in {"0", "false", "no", "off", ""}:
        return False
    raise ConfigError(f"{name} must be true or false, not {raw!r}")


def _int(raw: str, name: str) -> int:
    try:
        return int(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a whole number, not {raw!r}") from None


def _float(raw: str, name: str) -> float:
    try:
        return float(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a number, not {raw!r}") from None


def _optional_bool(raw: str, name: str) -> bool | None:
    return None if not raw.strip() else _bool(raw, name)


def _regions(raw: str, name: str) -> tuple[str, ...]:
    return tuple(part.strip().upper() for part in raw.split(",") if part.strip())


def _urls(raw: str, name: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in raw.split(",") if part.strip())


def _delays(raw: str, name: str) -> tuple[int, ...]:
    return tuple(_int(part, name) for part in raw.split(",") if part.strip())


# Environment variable -> (field, parser). One line each; the README's table mirrors this.
_VARIABLES: dict[str, tuple[str, Any]] = {
    "OFFLOAD_ENV": ("environment", str),
    "SECRET_KEY": ("secret_key", str),
    "DATABASE_URL": ("database_url", str),
    "DATABASE_BUSY_TIMEOUT": ("database_busy_timeout", _float),
    "AMQP_URL": ("amqp_url", str),
    "DISPATCH_MODE": ("dispatch_mode", str),
    "HOST": ("host", str),
    "PORT": ("port", _int),
    "BASE_URL": ("base_url", str),
    "LOG_LEVEL": ("log_level", str),
    "BENCH_MODES": ("bench_modes", _bool),
    "BENCH_RESULTS_DIR": ("bench_results_dir", str),
    "WEB_POOL_SIZE": ("web_pool_size", _int),
    "WEB_HEADER_TIMEOUT": ("web_header_timeout", _float),
    "WEB_IDLE_TIMEOUT": ("web_idle_timeout", _float),
    "DATABASE_POOL_SIZE": ("database_pool_size", _int),
    "DATABASE_POOL_TIMEOUT": ("database_pool_timeout", _float),
    "DATABASE_TIMEOUT": ("database_timeout", _float),
    "WEB_WORKERS": ("web_workers", _int),
    "TCP_NODELAY": ("tcp_nodelay", _bool),
    "HUB_BLOCK_REPORT_MS": ("hub_block_report_ms", _float),
    "MAX_BODY_BYTES": ("max_body_bytes", _int),
    "PUBLISH_TIMEOUT": ("publish_timeout", _float),
    "QUEUED_MARK_INTERVAL": ("queued_mark_interval", _float),
    "SMTP_HOST": ("smtp_host", str),
    "SMTP_PORT": ("smtp_port", _int),
    "SMTP_USERNAME": ("smtp_username", str),
    "SMTP_PASSWORD": ("smtp_password", str),
    "SMTP_STARTTLS": ("smtp_starttls", _bool),
    "SMTP_ALLOW_INSECURE_LOGIN": ("smtp_allow_insecure_login", _bool),
    "SMTP_TIMEOUT": ("smtp_timeout", _float),
    "MAIL_FROM": ("mail_from", str),
    "SMS_GATEWAY_URL": ("sms_gateway_url", str),
    "SMS_TIMEOUT": ("sms_timeout", _float),
    "METRICS_PORT": ("metrics_port", _int),
    "CONSUMER_CONCURRENCY": ("consumer_concurrency", _int),
    "CONSUMER_PREFETCH": ("consumer_prefetch", _int),
    "WORKER_NICE": ("worker_nice", _int),
    "QUEUE_TYPE": ("queue_type", str),
    "MAX_ATTEMPTS": ("max_attempts", _int),
    "RETRY_DELAYS_MS": ("retry_delays_ms", _delays),
    "RELAY_INTERVAL": ("relay_interval", _float),
    "RELAY_BATCH_SIZE": ("relay_batch_size", _int),
    "RELAY_GRACE_SECONDS": ("relay_grace_seconds", _float),
    "RELAY_SWEEP_AFTER_SECONDS": ("relay_sweep_after_seconds", _float),
    "EVENT_RETENTION_DAYS": ("event_retention_days", _int),
    "SEND_LEASE_SECONDS": ("send_lease_seconds", _float),
    "UNVERIFIED_EXPIRY_SECONDS": ("unverified_expiry_seconds", _int),
    "RESEND_MAX": ("resend_max", _int),
    "RESEND_COOLDOWN_SECONDS": ("resend_cooldown_seconds", _int),
    "RATE_LIMIT_ENABLED": ("rate_limit_enabled", _bool),
    "RATE_LIMIT_REGISTRATIONS": ("rate_limit_registrations", str),
    "RATE_LIMIT_VERIFICATIONS": ("rate_limit_verifications", str),
    "RATE_LIMIT_TRUSTED_PROXIES": ("rate_limit_trusted_proxies", _int),
    "SMS_BUDGET_GLOBAL": ("sms_budget_global", str),
    "SMS_BUDGET_PER_COUNTRY": ("sms_budget_per_country", str),
    "SMS_BUDGET_PER_NUMBER": ("sms_budget_per_number", str),
    "SMS_ALLOWED_COUNTRIES": ("sms_allowed_countries", _regions),
    "ALLOW_CLIENT_MODE": ("allow_client_mode", _optional_bool),
    "SINK_DELAY_MS": ("sink_delay_ms", _float),
    "WEBHOOK_URLS": ("webhook_urls", _urls),
    "WEBHOOK_SECRET": ("webhook_secret", str),
    "CLUSTER_TLS_PORT": ("cluster_tls_port", _int),
    "OPS_TOKEN": ("ops_token", str),
    "PROMETHEUS_MULTIPROC_DIR": ("prometheus_multiproc_dir", str),
}


def load_settings(environ: Mapping[str, str] | None = None) -> Settings:
    """Build Settings from the environment (or the mapping given), validated."""
    env = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    for variable, (field, parse) in _VARIABLES.items():
        raw = env.get(variable)
        if raw is None:
            continue
        values[field] = parse(raw) if parse is str else parse(raw, variable)
    settings = Settings(**values)
    if "BASE_URL" not in env and "PORT" in env:
        settings = replace(settings, base_url=f"http://{settings.host}:{settings.port}")
    return settings.validate()


def variables_set(environ: Mapping[str, str] | None = None) -> frozenset[str]:
    """The settings' variables set to a non-empty value: for a caller whose own default differs
    from the app's (the dev stack starts a private broker and database unless AMQP_URL or
    DATABASE_URL names one)."""
    env = os.environ if environ is None else environ
    return frozenset(variable for variable in _VARIABLES if env.get(variable))


def load_settings_or_exit() -> Settings:
    """For process entry points: the settings, or a one-line error on stderr and exit status 2."""
    try:
        return load_settings()
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
