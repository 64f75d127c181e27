"""What the broker itself dead-letters from a channel's work queue is parked, events included;
and a work queue declared before that rule is taken as it is, with a warning, while any other
difference is still refused. Each test declares the topology in a vhost of its own."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from datetime import UTC, datetime

import pika
import pika.exceptions
import pytest

from app.events import USER_REGISTERED, encode_event, user_event
from app.jobs import EVENTS_EXCHANGE, JOBS_EXCHANGE, PARKED_EXCHANGE, parked_queue, work_queue
from app.topology import declare_topology
from services.parked import list_parked
from tests.integration.helpers import own_vhost, queue_arguments, wait_for

pytestmark = pytest.mark.integration

DELAYS = (2000,)


@pytest.fixture
def vhost_url(stack) -> Iterator[str]:
    with own_vhost(stack, "dead-letters") as url:
        yield url


def ready(channel, queue: str) -> int:
    return channel.queue_declare(queue, passive=True).method.message_count


def declare_email_queue_as_before(channel, queue_type: str) -> None:
    """The email work queue as versions before declared it: no x-dead-letter-routing-key."""
    channel.queue_declare(
        work_queue("email"),
        durable=True,
        arguments={"x-queue-type": queue_type, "x-dead-letter-exchange": PARKED_EXCHANGE},
    )


def test_an_event_the_broker_dead_letters_from_a_work_queue_is_parked(vhost_url):
    """A `user.registered` event that expires in the email and SMS queues (as under a length
    limit or a delivery limit) reaches both parking queues: its own routing key names none."""
    connection = pika.BlockingConnection(pika.URLParameters(vhost_url))
    try:
        channel = connection.channel()
        declare_topology(channel, DELAYS)
        channel.confirm_delivery()
        event = user_event(USER_REGISTERED, "user-1", datetime.now(UTC))
        channel.basic_publish(
            EVENTS_EXCHANGE,
            USER_REGISTERED,
            encode_event(event["body"]),
            pika.BasicProperties(
                content_type="application/json",
                delivery_mode=pika.DeliveryMode.Persistent,
                message_id=event["id"],
                type=USER_REGISTERED,
                expiration="1",  # no consumer here: it expires at the head of each queue
            ),
            mandatory=True,
        )
        wait_for(
            lambda: (
                ready(channel, parked_queue("email")) == 1
                and ready(channel, parked_queue("sms")) == 1
            ),
            timeout=15,
            what="the expired event in both parking queues",
        )
        assert ready(channel, work_queue("email")) == ready(channel, work_queue("sms")) == 0
        [parked] = list_parked(channel, "email", limit=10)
        assert parked.recipient == f"{USER_REGISTERED} (event {event['id']})"
        assert parked.reason == "dead-lettered by the broker"
    finally:
        connection.close()


def test_a_work_queue_declared_before_the_routing_key_is_taken_with_a_warning(
    vhost_url, stack, caplog
):
    connection = pika.BlockingConnection(pika.URLParameters(vhost_url))
    try:
        channel = connection.channel()
        declare_email_queue_as_before(channel, "classic")
        with caplog.at_level(logging.WARNING, logger="app.topology"):
            declare_topology(channel, DELAYS)
        assert [r.getMessage() for r in caplog.records if work_queue("email") in r.getMessage()]
        assert not [r for r in caplog.records if work_queue("sms") in r.getMessage()]
        # The channel still works, the old queue is bound as before, the other one is new.
        channel.confirm_delivery()
        channel.basic_publish(JOBS_EXCHANGE, "email", b"{}", mandatory=True)
        assert ready(channel, work_queue("email")) == 1
    finally:
        connection.close()
    arguments = queue_arguments(stack, vhost_url)
    assert "x-dead-letter-routing-key" not in arguments[work_queue("email")]
    assert "x-dead-letter-routing-key" in arguments[work_queue("sms")]


def test_a_work_queue_of_another_type_is_still_refused(vhost_url):
    connection = pika.BlockingConnection(pika.URLParameters(vhost_url))
    try:
        channel = connection.channel()
        declare_email_queue_as_before(channel, "quorum")
        with pytest.raises(pika.exceptions.ChannelClosedByBroker) as refused:
            declare_topology(channel, DELAYS, queue_type="classic")
        assert refused.value.reply_code == 406
    finally:
        if connection.is_open:
            connection.close()
