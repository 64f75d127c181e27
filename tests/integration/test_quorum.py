"""QUEUE_TYPE=quorum: the same topology as quorum queues (what a RabbitMQ cluster wants), in a
vhost of its own on the test node: jobs are confirmed, retries wait out their TTL and come back,
parked jobs land in their queue."""

from __future__ import annotations

import gevent
import pika
import pytest

from app.jobs import PARKED_EXCHANGE, EmailJob, encode_job, parked_queue, retry_queue, work_queue
from app.messaging import PikaPublisher
from app.topology import declare_topology
from tests.integration.helpers import own_vhost, queue_arguments, wait_for

pytestmark = pytest.mark.integration

DELAYS = (2000,)


def test_quorum_topology_confirms_retries_and_parks(stack):
    with own_vhost(stack, "quorum") as url:
        connection = pika.BlockingConnection(pika.URLParameters(url))
        channel = connection.channel()
        declare_topology(channel, DELAYS, queue_type="quorum")
        declared = channel.queue_declare(work_queue("email"), passive=True)
        assert declared.method.message_count == 0

        # The web publisher, in quorum mode, gets its confirm (a quorum queue confirms once a
        # majority of its replicas, here the one node, has the message).
        publisher = PikaPublisher(url, retry_delays_ms=DELAYS, queue_type="quorum")
        job = EmailJob(notification_id="q1", to="q@example.com", subject="s", text="t")
        gevent.spawn(publisher.publish, [job], timeout=10).get(timeout=15)
        publisher.close()
        assert channel.queue_declare(work_queue("email"), passive=True).method.message_count == 1

        # A retry waits out its TTL in the retry queue, then is dead-lettered back to work.
        channel.confirm_delivery()
        channel.basic_publish(
            "",
            retry_queue("email", DELAYS[0]),
            encode_job(job),
            pika.BasicProperties(delivery_mode=2),
        )
        retrying = channel.queue_declare(retry_queue("email", DELAYS[0]), passive=True)
        assert retrying.method.message_count == 1  # waiting out its TTL, not yet back
        wait_for(
            lambda: (
                channel.queue_declare(work_queue("email"), passive=True).method.message_count == 2
            ),
            timeout=20,
            what="the retry to come back",
        )
        assert (
            channel.queue_declare(
                retry_queue("email", DELAYS[0]), passive=True
            ).method.message_count
            == 0
        )
        channel.basic_publish(
            PARKED_EXCHANGE, "email", encode_job(job), pika.BasicProperties(delivery_mode=2)
        )
        wait_for(
            lambda: (
                channel.queue_declare(parked_queue("email"), passive=True).method.message_count == 1
            ),
            timeout=10,
            what="the parked job",
        )
        connection.close()


def test_quorum_queues_dead_letter_at_least_once(stack):
    """Issue 10, item 11: a quorum queue that dead-letters (work queue to parked, retry queue
    back to work) does it at least once, which RabbitMQ allows with overflow reject-publish."""
    with own_vhost(stack, "quorum-dlx") as url:
        connection = pika.BlockingConnection(pika.URLParameters(url))
        declare_topology(connection.channel(), DELAYS, queue_type="quorum")
        connection.close()
        arguments = queue_arguments(stack, url)
    for name in ("email", "sms"):
        for queue in (work_queue(name), retry_queue(name, DELAYS[0])):
            assert '"x-dead-letter-strategy"' in arguments[queue], arguments[queue]
            assert '"at-least-once"' in arguments[queue], arguments[queue]
            assert '"x-overflow"' in arguments[queue], arguments[queue]
            assert '"reject-publish"' in arguments[queue], arguments[queue]
    # The classic queue version and mode are a classic queue's arguments only.
    assert not [queue for queue, text in arguments.items() if "x-queue-version" in text]
    assert not [queue for queue, text in arguments.items() if "x-queue-mode" in text]
