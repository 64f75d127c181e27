"""The consumers' statements find their rows by index, never by reading the whole table: a
scan costs nothing on a test's few rows and milliseconds per batch on a real ledger, growing
with every registration (SQLite's query plan says which)."""

from __future__ import annotations

from sqlalchemy import event, select

from app.ledger import (
    Sent,
    mark_confirmed,
    new_lease_token,
    record_sends,
    take_event_send_leases,
    take_send_leases,
)
from app.models import Notification


def plans_of_updates(sessions, run, tables=("NOTIFICATIONS",)):
    """The query plan of every UPDATE of `tables` that `run(session)` executes."""
    return [plan for _statement, plan in statements_and_plans(sessions, run, tables)]


def statements_and_plans(sessions, run, tables):
    captured: list[tuple[str, object]] = []
    with sessions() as session:
        engine = session.get_bind()

        def capture(_conn, _cursor, statement, parameters, _context, many):
            if any(statement.lstrip().upper().startswith(f"UPDATE {t}") for t in tables):
                # An executemany runs one plan for every row: the first row's shows it.
                captured.append((statement, parameters[0] if many else parameters))

        event.listen(engine, "before_cursor_execute", capture)
        try:
            run(session)
        finally:
            event.remove(engine, "before_cursor_execute", capture)
        connection = session.connection().connection.driver_connection
        plans = []
        for statement, parameters in captured:
            rows = connection.execute(f"EXPLAIN QUERY PLAN {statement}", parameters).fetchall()
            plans.append((statement, " / ".join(str(row[-1]) for row in rows)))
        session.rollback()
    return plans


def test_recording_sends_looks_rows_up_by_their_key(sessions, email_notification):
    token = new_lease_token()
    with sessions() as session:
        rows = session.scalars(
            select(Notification).where(Notification.user_id == email_notification.user_id)
        ).all()
        sent = [Sent(row.id, token, row.channel) for row in rows]
    assert len(sent) == 2  # a batch: SQLite plans one row apart from several

    def claim_and_record(session):
        take_send_leases(session, [s.notification_id for s in sent], 30, token)
        session.commit()
        record_sends(session, sent, [])

    plans = plans_of_updates(sessions, claim_and_record)
    # The claim's one UPDATE, then the record's one (which takes the secrets out as well).
    assert len(plans) == 2
    for plan in plans:
        assert "SCAN notifications" not in plan, plan
        assert "SEARCH notifications" in plan, plan


def test_marking_confirmed_rows_queued_looks_them_up_by_their_key(sessions, settings):
    # "status = 'pending'" has an index too, and from three ids on SQLite chose it: every
    # confirm batch (13 registrations, 26 rows, at one client) then read every pending row of
    # the ledger, all of them while the consumers lag or the broker is away.
    from app.registration import register_user, validate_registration

    ids = []
    for number in range(3):
        data = {"name": "Ann", "email": f"ann{number}@example.com", "phone": f"+1650253000{number}"}
        with sessions() as session:
            registered = register_user(session, settings, validate_registration(data))
        ids.extend(n.id for n in registered.notifications)

    plans = plans_of_updates(sessions, lambda session: mark_confirmed(session, ids, []))
    assert len(plans) == 1
    assert "ix_notifications_status" not in plans[0], plans[0]
    assert "SEARCH notifications USING INDEX sqlite_autoindex_notifications_1 (id=?)" in plans[0]


def test_the_relay_marks_what_it_published_by_key(sessions, settings):
    from app.messaging import InMemoryPublisher
    from app.registration import register_user, validate_registration
    from services.relay import publish_events_once

    for number in range(3):  # their events are the relay's at once (no request holds them)
        data = {"name": "Bo", "email": f"bo{number}@example.com", "phone": f"+1650253001{number}"}
        with sessions() as session:
            register_user(session, settings, validate_registration(data))

    def publish(_session):
        published = publish_events_once(
            sessions, InMemoryPublisher(), relay_id="r1", batch_size=10, publish_timeout=5
        )
        assert published == 3

    marks = [
        (statement, plan)
        for statement, plan in statements_and_plans(sessions, publish, ("EVENTS", "NOTIFICATIONS"))
        if "published_at" in statement or "queued_at" in statement
    ]
    assert len(marks) == 2  # the events published, their rows queued
    for statement, plan in marks:
        assert "_status_created_at" not in plan, (statement, plan)
        assert "SCAN" not in plan, (statement, plan)


def test_a_consumer_claims_a_batch_of_events_rows_by_the_event_index(sessions, settings):
    from app.registration import register_user, validate_registration

    event_ids = []
    for number in range(3):
        data = {"name": "Cy", "email": f"cy{number}@example.com", "phone": f"+1650253002{number}"}
        with sessions() as session:
            event_ids.append(register_user(session, settings, validate_registration(data)).event.id)

    def claim(session):
        leases = take_event_send_leases(session, event_ids, "email", 30, new_lease_token())
        assert len(leases) == 3

    plans = plans_of_updates(sessions, claim)
    assert len(plans) == 1
    assert "ix_notifications_status" not in plans[0], plans[0]
    assert "ix_notifications_event_id" in plans[0], plans[0]
