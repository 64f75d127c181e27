"""The relay's sweeper deletes what has served its purpose: published events and ended webhook
deliveries older than EVENT_RETENTION_DAYS; never an event still to publish nor a delivery still
retrying."""

from datetime import timedelta

from sqlalchemy import insert, select

from app.events import EVENTS, USER_REGISTERED, user_event
from app.models import Event, WebhookDelivery, utcnow
from services.relay import forget_old_events

DAY = 86400.0


def add_event(session, *, status, age_days):
    row = user_event(USER_REGISTERED, "u" * 32, utcnow() - timedelta(days=age_days))
    row["status"] = status
    session.execute(insert(EVENTS), [row])
    return row["id"]


def add_delivery(session, event_id, *, status, age_days):
    session.add(
        WebhookDelivery(
            event_id=event_id,
            endpoint="webhook.abc",
            status=status,
            attempts=1,
            created_at=utcnow() - timedelta(days=age_days),
        )
    )


def test_only_what_ended_long_ago_is_deleted(sessions):
    with sessions() as session:
        old_published = add_event(session, status="published", age_days=40)
        old_pending = add_event(session, status="pending", age_days=40)
        recent = add_event(session, status="published", age_days=1)
        add_delivery(session, old_published, status="delivered", age_days=40)
        add_delivery(session, old_pending, status="retrying", age_days=40)
        add_delivery(session, recent, status="failed", age_days=1)
        session.commit()

    assert forget_old_events(sessions, retention_seconds=30 * DAY, batch_size=10) == 2

    with sessions() as session:
        assert set(session.scalars(select(Event.id))) == {old_pending, recent}
        assert set(session.scalars(select(WebhookDelivery.event_id))) == {old_pending, recent}
    assert forget_old_events(sessions, retention_seconds=30 * DAY, batch_size=10) == 0


def test_a_batch_at_a_time(sessions):
    with sessions() as session:
        for _ in range(5):
            add_event(session, status="published", age_days=40)
        session.commit()
    assert forget_old_events(sessions, retention_seconds=30 * DAY, batch_size=2) == 2
    assert forget_old_events(sessions, retention_seconds=30 * DAY, batch_size=10) == 3
