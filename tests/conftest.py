"""Shared fixtures: a migrated database per test, the app with its twins, WebTest."""

from __future__ import annotations

import io
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import webtest
from flask import Flask
from sqlalchemy.orm import Session, sessionmaker

from app import create_app
from app.config import Settings
from app.db import make_engine, make_session_factory
from app.extension import offload
from app.logs import JsonFormatter
from app.messaging import InMemoryPublisher
from app.migrate import upgrade
from app.senders import RecordingSender
from devstack import PROJECT_ROOT

IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}


def require(available: bool, what: str) -> None:
    """Skip a test whose real component is missing on a laptop; fail it in CI."""
    if available:
        return
    if IN_CI:
        pytest.fail(f"{what} is required in CI but missing")
    pytest.skip(f"{what} is not available here")


@pytest.fixture(scope="session")
def migrated_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One database migrated with `alembic upgrade head`, copied for each test."""
    path = tmp_path_factory.mktemp("template") / "template.db"
    upgrade(f"sqlite:///{path}")
    return path


@pytest.fixture
def database_url(migrated_template: Path, tmp_path: Path) -> str:
    path = tmp_path / "offload.db"
    shutil.copy(migrated_template, path)
    return f"sqlite:///{path}"


@pytest.fixture
def settings(database_url: str) -> Settings:
    return Settings(
        database_url=database_url,
        secret_key="test-secret-at-least-32-bytes-long",
        base_url="http://testserver",
        dispatch_mode="queued",
        # WebTest drives the app without running gevent's hub, so a deferred mark would never
        # happen: mark queued rows at once (the integration tests run the deferred marker).
        queued_mark_interval=0,
    )


@pytest.fixture
def publisher() -> InMemoryPublisher:
    return InMemoryPublisher()


@pytest.fixture
def email_sender() -> RecordingSender:
    return RecordingSender()


@pytest.fixture
def sms_sender() -> RecordingSender:
    return RecordingSender()


@pytest.fixture
def app(
    settings: Settings,
    publisher: InMemoryPublisher,
    email_sender: RecordingSender,
    sms_sender: RecordingSender,
) -> Iterator[Flask]:
    application = create_app(
        settings, publisher=publisher, email_sender=email_sender, sms_sender=sms_sender
    )
    yield application
    offload(application).engine.dispose()


@pytest.fixture
def testapp(app: Flask) -> webtest.TestApp:
    return webtest.TestApp(app)


@pytest.fixture
def sessions(database_url: str) -> Iterator[sessionmaker[Session]]:
    engine = make_engine(database_url)
    yield make_session_factory(engine)
    engine.dispose()


@pytest.fixture
def json_log() -> Iterator[io.StringIO]:
    """Everything logged while the test runs, as the JSON lines production would write."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.addHandler(handler)
    yield stream
    root.removeHandler(handler)


@pytest.fixture
def artifacts_dir() -> Path:
    path = PROJECT_ROOT / "test-artifacts"
    path.mkdir(exist_ok=True)
    return path


# -- the real stack: RabbitMQ node, SMTP and SMS sinks, web, consumers, relay ------------------


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    """The whole stack as real processes on free ports, shared by a test session.

    Sinks answer after 20 ms; consumers run 4 sends at once, so a batch of jobs takes long
    enough to be interrupted mid-stream. Tests that break a part restart it before returning.
    """
    from devstack.broker_node import rabbitmq_installed
    from devstack.stack import Stack, StackConfig

    require(rabbitmq_installed(), "RabbitMQ (apt-get install rabbitmq-server)")
    config = StackConfig.on_free_ports(
        tmp_path_factory.mktemp("stack"),
        sink_delay_ms=20.0,
        consumer_concurrency=4,
        consumer_prefetch=8,
        extra_env={
            "RETRY_DELAYS_MS": "200,400,800",
            "MAX_ATTEMPTS": "12",
            "SEND_LEASE_SECONDS": "3",
            "SMS_TIMEOUT": "1",
            "SMTP_TIMEOUT": "2",
            "RATE_LIMIT_ENABLED": "false",
            "RELAY_INTERVAL": "0.2",
            # Longer than SMTP_TIMEOUT + SMS_TIMEOUT, the longest inline send.
            "RELAY_GRACE_SECONDS": "3.5",
            # Longer than the longest retry delay plus the send lease (refused otherwise).
            "RELAY_SWEEP_AFTER_SECONDS": "5",
            "BENCH_MODES": "true",
            "SECRET_KEY": "integration-secret",
        },
    )
    with Stack(config) as running:
        yield running


# -- the production shape: nginx (TLS), gunicorn, PostgreSQL, three RabbitMQ nodes -----------


@pytest.fixture(scope="session")
def cluster() -> Iterator[Any]:
    """`make cluster`'s harness on free ports, shared by the cluster fault tests and the browser
    journey through its nginx. Sinks answer after 5 ms; retries and the relay are quick so a
    fault's redeliveries drain in seconds. Tests that break a part restore it."""
    from devstack.broker_node import rabbitmq_installed
    from devstack.cluster import NGINX, Cluster, ClusterConfig
    from devstack.postgres import postgres_bin

    require(rabbitmq_installed(), "RabbitMQ (apt-get install rabbitmq-server)")
    require(postgres_bin() is not None, "PostgreSQL (apt-get install postgresql)")
    require(os.path.exists(NGINX), "Debian's nginx (apt-get install nginx)")
    # A folder of its own, not pytest's: pytest removes old base folders as other runs on the
    # machine start, which would pull the nodes' data from under a long session.
    run_dir = Path(tempfile.mkdtemp(prefix="offload-cluster-"))
    config = ClusterConfig.on_free_ports(
        run_dir,
        sink_delay_ms=5.0,
        rate_limits=False,
        extra_env={
            "RETRY_DELAYS_MS": "200,400,800",
            "MAX_ATTEMPTS": "12",
            "SEND_LEASE_SECONDS": "3",
            "SMS_TIMEOUT": "1",
            "SMTP_TIMEOUT": "2",
            # Longer than SMTP_TIMEOUT + SMS_TIMEOUT, the longest inline send.
            "RELAY_GRACE_SECONDS": "3.5",
            "RELAY_INTERVAL": "0.5",
            # The sweeper is the backstop for jobs a quorum queue holds back at a leader's death.
            "RELAY_SWEEP_AFTER_SECONDS": "30",
            "CONSUMER_CONCURRENCY": "8",
            "CONSUMER_PREFETCH": "16",
            "OPS_TOKEN": CLUSTER_OPS_TOKEN,
        },
    )
    try:
        with Cluster(config) as running:
            yield running
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)


CLUSTER_OPS_TOKEN = "cluster-test-operator-token"


@pytest.fixture
def email_notification(sessions: Any, settings: Settings) -> Any:
    """A registered user's welcome-email row, as the consumer tests start from."""
    from app.registration import register_user, validate_registration

    with sessions() as session:
        registered = register_user(
            session,
            settings,
            validate_registration(
                {"name": "Ann", "email": "ann@example.com", "phone": "+16502530000"}
            ),
        )
        return next(n for n in registered.notifications if n.channel == "email")
