"""What differs on PostgreSQL, the production database: migrations, the unique-index referee
under a real race, the relay's `SKIP LOCKED` claims and the events it publishes as stored, the
shared rate-limit counter, and pg8000's connections reset while it reads a reply."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import timedelta

import pg8000.dbapi
import pytest
import webtest
from alembic import command
from sqlalchemy import insert, text, update
from sqlalchemy.exc import DBAPIError

from app import create_app
from app.config import Settings
from app.db import make_engine, make_session_factory
from app.events import EVENTS, encode_event, notification_event
from app.messaging import InMemoryPublisher
from app.migrate import alembic_config
from app.models import Event, Notification, utcnow
from app.senders import RecordingSender
from services.relay import claim_pending, publish_events_once
from tests.conftest import require
from tests.integration.helpers import unique_user
from tests.integration.postgres import ResettingProxy, postgres_bin, private_cluster

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def postgres_url() -> Iterator[str]:
    require(postgres_bin() is not None, "PostgreSQL (apt-get install postgresql)")
    with private_cluster() as url:
        command.upgrade(alembic_config(url), "head")
        yield url


def make_testapp(url: str, **overrides: object) -> webtest.TestApp:
    # queued_mark_interval=0: a confirm's mark is written at once, as in tests/conftest.py. With
    # the default its flush waited on the hub for a later test that yields to it, and ran there
    # against this test's database, gone by then (through the resetting proxy: a connect that
    # hung the whole run in test_quorum).
    settings = Settings(
        database_url=url, secret_key="pg-test", rate_limit_enabled=False, queued_mark_interval=0
    )
    app = create_app(
        settings.with_overrides(**overrides) if overrides else settings,
        publisher=InMemoryPublisher(),
        email_sender=RecordingSender(),
        sms_sender=RecordingSender(),
    )
    return webtest.TestApp(app)


def test_migrations_match_the_models_on_postgres(postgres_url):
    engine = make_engine(postgres_url)
    assert engine.dialect.driver == "pg8000"  # pure Python: yields to the gevent hub
    engine.dispose()
    command.check(alembic_config(postgres_url))


def test_registration_and_duplicates_on_postgres(postgres_url):
    testapp = make_testapp(postgres_url)
    user = unique_user("pg")
    response = testapp.post_json("/api/users?mode=serial", user, status=201)
    created = response.json["user"]
    assert [n["status"] for n in created["notifications"]] == ["sent", "sent"]
    fetched = testapp.get(response.headers["Location"]).json["user"]
    assert fetched["created_at"].endswith("+00:00")
    clash = testapp.post_json("/api/users", {**user, "email": "other@example.com"}, status=409)
    assert list(clash.json["fields"]) == ["phone"]


def test_racing_registrations_of_one_address_let_exactly_one_win(postgres_url):
    user = unique_user("race")
    # The apps are built first, one at a time: compiling Flask's routes from several threads at
    # once trips CPython 3.11's ast module. What races is the requests.
    apps = [make_testapp(postgres_url) for _ in range(8)]
    statuses: list[int] = []
    barrier = threading.Barrier(len(apps), timeout=30)

    def attempt(n: int) -> None:
        barrier.wait()
        payload = {**user, "phone": f"+1650555{1000 + n}"}
        statuses.append(apps[n].post_json("/api/users", payload, expect_errors=True).status_int)

    threads = [threading.Thread(target=attempt, args=(n,)) for n in range(len(apps))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert sorted(statuses) == [201] + [409] * 7


def test_two_relays_claim_disjoint_rows_with_skip_locked(postgres_url):
    testapp = make_testapp(postgres_url)
    for _ in range(5):
        testapp.post_json("/api/users?mode=queued", unique_user("relay"), status=201)
    engine = make_engine(postgres_url)
    sessions = make_session_factory(engine)
    with sessions() as session:
        session.execute(
            update(Notification).values(
                status="pending", claimed_until=None, created_at=utcnow() - timedelta(minutes=1)
            )
        )
        # Their events went out: the rows are the relay's to publish as jobs (an inline send
        # that failed leaves them so).
        session.execute(update(Event).values(status="published"))
        session.commit()
        pending = session.execute(
            text("SELECT count(*) FROM notifications WHERE status = 'pending'")
        ).scalar_one()
    with sessions() as first, sessions() as second:
        a = {
            n.id
            for n in claim_pending(
                first, relay_id="a", batch_size=pending // 2, grace_seconds=0, publish_timeout=1
            )
        }
        b = {
            n.id
            for n in claim_pending(
                second, relay_id="b", batch_size=pending, grace_seconds=0, publish_timeout=1
            )
        }
    engine.dispose()
    assert len(a) == pending // 2 and a.isdisjoint(b) and len(a | b) == pending


def test_the_relay_publishes_each_event_as_stored_oldest_first(postgres_url):
    # The claim returns the body as PostgreSQL keeps it (`json` keeps the text it was given):
    # the engine stores compact JSON, so that text is the message.
    engine = make_engine(postgres_url)
    sessions = make_session_factory(engine)
    rows = [
        notification_event(f"{i:032x}", "sms", "sent", utcnow() - timedelta(seconds=age))
        for i, age in enumerate([3, 9, 6])
    ]
    with sessions() as session:
        session.execute(update(Event).values(status="published"))  # earlier tests' events
        session.execute(insert(EVENTS), rows)
        session.commit()
    relay = InMemoryPublisher()
    published = publish_events_once(
        sessions, relay, relay_id="pg", batch_size=10, publish_timeout=1
    )
    engine.dispose()
    oldest_first = [rows[1], rows[2], rows[0]]
    assert published == 3
    assert [e.id for e in relay.events] == [row["id"] for row in oldest_first]
    assert [e.body for e in relay.events] == [encode_event(row["body"]) for row in oldest_first]


def test_rate_limit_counter_is_shared_through_postgres(postgres_url):
    first = make_testapp(postgres_url, rate_limit_enabled=True, rate_limit_registrations="2/minute")
    second = make_testapp(
        postgres_url, rate_limit_enabled=True, rate_limit_registrations="2/minute"
    )
    first.post_json("/api/users", unique_user("rl"), status=201)
    second.post_json("/api/users", unique_user("rl"), status=201)
    limited = first.post_json("/api/users", unique_user("rl"), status=429)
    assert int(limited.headers["Retry-After"]) > 0


def test_case_folded_email_and_expiry_on_postgres(postgres_url):
    testapp = make_testapp(postgres_url)
    user = unique_user("Fold")
    created = testapp.post_json("/api/users?mode=queued", user, status=201).json["user"]
    shouted = {**user, "email": user["email"].upper(), "phone": unique_user("x")["phone"]}
    testapp.post_json("/api/users?mode=queued", shouted, status=409)
    engine = make_engine(postgres_url)
    with make_session_factory(engine)() as session:
        session.execute(
            text("UPDATE users SET created_at = created_at - interval '49 hours' WHERE id = :id"),
            {"id": created["id"]},
        )
        session.commit()
    engine.dispose()
    # Expired and never verified: the same address registers again, the old row gives way.
    testapp.post_json("/api/users?mode=queued", shouted, status=201)


def test_sms_budget_is_counted_in_the_registration_transaction_on_postgres(postgres_url):
    testapp = make_testapp(postgres_url, sms_budget_per_country="1/hour")
    # A calling code of its own, so other tests' registrations do not count here.
    first = testapp.post_json(
        "/api/users?mode=queued", {**unique_user("budget"), "phone": "+33 6 12 34 56 78"}
    ).json["user"]
    second = testapp.post_json(
        "/api/users?mode=queued", {**unique_user("budget"), "phone": "+33 6 12 34 56 79"}
    ).json["user"]
    statuses = [{n["channel"]: n["status"] for n in u["notifications"]} for u in (first, second)]
    assert statuses[0]["sms"] != "held" and statuses[1]["sms"] == "held"


def test_a_batch_is_recorded_sent_and_scrubbed_in_one_statement_on_postgres(postgres_url):
    from app.jobs import encode_job, job_from_dict, scrubbed_payload
    from app.models import Notification as Row
    from services.handlers import Claim, RetryPolicy, SendResult, claim_batch, record_batch

    policy = RetryPolicy(max_attempts=3, delays_ms=(100,))
    testapp = make_testapp(postgres_url)
    token = testapp.post_json("/api/users?mode=queued", unique_user("scrub"), status=201).json[
        "status_token"
    ]
    engine = make_engine(postgres_url)
    sessions = make_session_factory(engine)
    user_id = testapp.get(f"/api/status/{token}").json["user"]["id"]
    with sessions() as session:
        rows = session.query(Row).filter_by(user_id=user_id).all()
        bodies = {row.channel: encode_job(job_from_dict(row.payload)) for row in rows}
        # What the Python scrub makes of each: the record writes the same in SQL (jsonb_set).
        scrubbed = {row.id: scrubbed_payload(row.channel, row.payload) for row in rows}
    claims = []
    for channel, body in bodies.items():
        (claim,) = claim_batch([body], channel=channel, sessions=sessions, policy=policy)
        assert isinstance(claim, Claim)
        claims.append(claim)
    record_batch([SendResult(claim, None) for claim in claims], sessions=sessions, policy=policy)
    with sessions() as session:
        rows = session.query(Row).filter_by(user_id=user_id).all()
        assert {row.status for row in rows} == {"sent"}
        for row in rows:
            assert "verify-email" not in str(row.payload) and "code is" not in str(row.payload)
            assert row.payload == scrubbed[row.id]
    engine.dispose()


# pg8000 reads the first bytes of a reply outside its own `except OSError`: a connection reset
# there (PostgreSQL restarting under load) escaped as a bare ConnectionResetError, which
# SQLAlchemy does not wrap, and the request answered 500 (commit 344ee43 fixed it in app/db.py).


def test_a_reset_while_reading_a_reply_is_a_lost_connection(postgres_url):
    with ResettingProxy(postgres_url) as proxy:
        engine = make_engine(proxy.url)
        connection = engine.connect()
        try:
            connection.execute(text("SELECT 1"))  # connected, the dialect initialised
            proxy.reset_on(b"reset while reading")
            with pytest.raises(DBAPIError) as caught:
                connection.execute(text("SELECT 'reset while reading'"))
        finally:
            # Not a rollback: on the reset socket it would fail too, and hide the first error.
            connection.invalidate()
            engine.dispose()
    assert proxy.resets == 1
    assert caught.value.connection_invalidated
    assert isinstance(caught.value.orig, pg8000.dbapi.InterfaceError)
    assert isinstance(caught.value.orig.__cause__, ConnectionResetError)


@pytest.mark.parametrize(
    "statement",
    [
        b"INSERT INTO users",
        # pg8000 commits with a statement of its own, not through SQLAlchemy's execute: seen in
        # test_cluster's PostgreSQL restart as a 500.
        b"commit\x00",
    ],
    ids=["insert", "commit"],
)
def test_a_reset_while_registering_is_503_with_retry_after(postgres_url, statement):
    with ResettingProxy(postgres_url) as proxy:
        testapp = make_testapp(proxy.url)
        proxy.reset_on(statement)
        refused = testapp.post_json("/api/users", unique_user("reset"), status=503)
        assert int(refused.headers["Retry-After"]) > 0
        assert proxy.resets == 1
        # The reset connection was thrown away: the client's retry gets a new one.
        testapp.post_json("/api/users", unique_user("reset"), status=201)


# The pool's pre-ping on checkout: pg8000 sends SQLAlchemy's empty statement as a simple Query.
PRE_PING = b"Q\x00\x00\x00\x06;\x00"


def test_a_reset_while_the_pool_pings_a_connection_gets_a_new_one(postgres_url):
    with ResettingProxy(postgres_url) as proxy:
        testapp = make_testapp(proxy.url)
        testapp.post_json("/api/users", unique_user("ping"), status=201)  # one pooled connection
        proxy.reset_on(PRE_PING)
        # What a pre-ping is for: the dead connection is replaced and the request served.
        testapp.post_json("/api/users", unique_user("ping"), status=201)
        assert proxy.resets == 1


def test_a_reset_while_rolling_back_at_teardown_still_answers(postgres_url):
    # The request has its answer; the session's rollback at teardown meets the lost connection.
    # Raised from the teardown, a bare ConnectionResetError reached gunicorn, which took it for
    # its own client's reset and closed the connection without an answer: nginx said 502.
    with ResettingProxy(postgres_url) as proxy:
        # One pooled connection: the lost one must go back to the pool, to be replaced.
        testapp = make_testapp(proxy.url, database_pool_size=1, database_pool_timeout=5)
        created = testapp.post_json("/api/users", unique_user("teardown"), status=201)
        proxy.reset_on(b"rollback\x00")
        testapp.get(f"/api/status/{created.json['status_token']}", status=200)
        assert proxy.resets == 1
        testapp.get(f"/api/status/{created.json['status_token']}", status=200)
