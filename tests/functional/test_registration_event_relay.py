"""A queued registration whose one message never reached the broker: the relay publishes the
event once the request's hold on it runs out, and that one message delivers both rows; it never
publishes them a second time as jobs."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import select, update

from app.events import REQUEST_HOLDER
from app.messaging import BrokerUnavailable, InMemoryPublisher
from app.models import Event, Notification, utcnow
from services.relay import publish_events_once, relay_once
from tests.functional.helpers import ADA, make_testapp


def run_relay(sessions, publisher):
    options = {"relay_id": "relay-1", "batch_size": 10, "publish_timeout": 1}
    publish_events_once(sessions, publisher, **options)
    relay_once(sessions, publisher, grace_seconds=30, **options)


def age_everything(sessions, *, hold_expired):
    """Make the rows older than the grace period; end the request's hold, or keep it."""
    an_hour_ago = utcnow() - timedelta(hours=1)
    with sessions() as session:
        session.execute(update(Notification).values(created_at=an_hour_ago))
        if hold_expired:
            session.execute(update(Event).values(claimed_until=an_hour_ago))
        session.commit()


def registered_while_the_broker_is_down(settings, sessions):
    down = InMemoryPublisher(fail_with=BrokerUnavailable("broker unreachable"))
    response = make_testapp(settings, down).post_json("/api/users?mode=queued", ADA, status=201)
    assert [n["status"] for n in response.json["user"]["notifications"]] == ["pending"] * 2
    with sessions() as session:
        [event] = session.scalars(select(Event)).all()
        assert (event.status, event.claimed_by) == ("pending", REQUEST_HOLDER)
    return event.id


def test_the_relay_publishes_the_event_and_only_the_event(settings, sessions):
    event_id = registered_while_the_broker_is_down(settings, sessions)
    age_everything(sessions, hold_expired=True)
    relay = InMemoryPublisher()
    run_relay(sessions, relay)
    assert [(event.id, event.type) for event in relay.events] == [(event_id, "user.registered")]
    assert relay.published == []  # no job per channel besides
    with sessions() as session:
        rows = session.scalars(select(Notification)).all()
        assert {(row.event_id, row.status) for row in rows} == {(event_id, "queued")}
        assert session.get(Event, event_id).status == "published"


def test_while_the_request_holds_its_event_the_relay_publishes_nothing(settings, sessions):
    registered_while_the_broker_is_down(settings, sessions)
    age_everything(sessions, hold_expired=False)
    relay = InMemoryPublisher()
    run_relay(sessions, relay)
    assert (relay.events, relay.published) == ([], [])
