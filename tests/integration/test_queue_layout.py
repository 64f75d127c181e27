"""Classic queues are declared in RabbitMQ's version 2 layout and in lazy mode, and one an older
version declared without either is taken as it is, with a warning. Each test declares the
topology in a vhost of its own."""

from __future__ import annotations

import logging

import pika
import pytest

from app.jobs import JOBS_EXCHANGE, PARKED_EXCHANGE, parked_queue, retry_queue, work_queue
from app.topology import declare_topology
from tests.integration.helpers import own_vhost, queue_arguments

pytestmark = pytest.mark.integration

DELAYS = (2000,)


def backing_queue_version(stack, vhost_url: str, queue: str) -> int:
    return stack.node.queue_layout(vhost_url.rsplit("/", 1)[1], queue).version


def backing_queue_mode(stack, vhost_url: str, queue: str) -> str:
    return stack.node.queue_layout(vhost_url.rsplit("/", 1)[1], queue).mode


def declare_the_topology_over(url: str, earlier: dict[str, dict], caplog) -> None:
    """Declare the queues as an older version did, then the topology over them. The channel
    must still work, and the old email work queue take a job, bound as before."""
    connection = pika.BlockingConnection(pika.URLParameters(url))
    try:
        channel = connection.channel()
        for queue, arguments_then in earlier.items():
            channel.queue_declare(queue, durable=True, arguments=arguments_then)
        with caplog.at_level(logging.WARNING, logger="app.topology"):
            declare_topology(channel, DELAYS)
        channel.confirm_delivery()
        channel.basic_publish(JOBS_EXCHANGE, "email", b"{}", mandatory=True)
        assert channel.queue_declare(work_queue("email"), passive=True).method.message_count
    finally:
        if connection.is_open:
            connection.close()


def warnings_about(caplog, argument: str) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == "app.topology" and argument in r.getMessage()
    ]


def test_every_classic_queue_is_declared_in_the_version_2_layout_and_lazy(stack):
    with own_vhost(stack, "layout") as url:
        connection = pika.BlockingConnection(pika.URLParameters(url))
        try:
            declare_topology(connection.channel(), DELAYS)
        finally:
            connection.close()
        arguments = queue_arguments(stack, url)
        assert backing_queue_version(stack, url, work_queue("email")) == 2
        assert backing_queue_version(stack, url, retry_queue("sms", DELAYS[0])) == 2
        assert backing_queue_mode(stack, url, work_queue("email")) == "lazy"
        assert backing_queue_mode(stack, url, work_queue("sms")) == "lazy"
        assert backing_queue_mode(stack, url, parked_queue("sms")) == "lazy"
    assert len(arguments) == 6  # work, retry and parking queue of each channel
    for queue, listed in arguments.items():
        assert '"x-queue-version"' in listed, (queue, listed)
        assert '"x-queue-mode"' in listed, (queue, listed)


def test_a_queue_declared_before_the_lazy_mode_is_taken_with_a_warning(stack, caplog):
    """The work queue as the version before this one declared it: version 2, default mode. It
    keeps running in that mode, and every other queue is lazy."""
    earlier = {
        work_queue("email"): {
            "x-queue-type": "classic",
            "x-queue-version": 2,
            "x-dead-letter-exchange": PARKED_EXCHANGE,
            "x-dead-letter-routing-key": "email",
        }
    }
    with own_vhost(stack, "layout-default-mode") as url:
        declare_the_topology_over(url, earlier, caplog)
        assert backing_queue_mode(stack, url, work_queue("email")) == "default"
        assert backing_queue_mode(stack, url, work_queue("sms")) == "lazy"
    warned = warnings_about(caplog, "x-queue-mode")
    assert len(warned) == 1 and work_queue("email") in warned[0], warned
    assert "queue-mode: lazy" in warned[0]


def test_a_queue_declared_in_the_version_1_layout_is_taken_with_a_warning(stack, caplog):
    """What an older version declared (its arguments as they were, without a version) stays
    as it is: the work queue, a retry queue and the parking queue of the email channel."""
    earlier = {
        work_queue("email"): {
            "x-queue-type": "classic",
            "x-dead-letter-exchange": PARKED_EXCHANGE,
            "x-dead-letter-routing-key": "email",
        },
        retry_queue("email", DELAYS[0]): {
            "x-queue-type": "classic",
            "x-message-ttl": DELAYS[0],
            "x-dead-letter-exchange": JOBS_EXCHANGE,
            "x-dead-letter-routing-key": "email",
        },
        parked_queue("email"): {"x-queue-type": "classic"},
    }
    with own_vhost(stack, "layout-v1") as url:
        declare_the_topology_over(url, earlier, caplog)
        arguments = queue_arguments(stack, url)
        assert backing_queue_version(stack, url, work_queue("email")) == 1
        assert backing_queue_version(stack, url, work_queue("sms")) == 2
    warned = warnings_about(caplog, "x-queue-version")
    assert sorted(message.split()[1] for message in warned) == sorted(earlier)
    for queue in earlier:
        assert '"x-queue-version"' not in arguments[queue], arguments[queue]
    assert '"x-queue-version"' in arguments[work_queue("sms")]


def test_a_queue_with_another_version_is_still_refused(stack):
    """Only a missing version is an older declaration; a different one is somebody's choice."""
    with own_vhost(stack, "layout-other") as url:
        connection = pika.BlockingConnection(pika.URLParameters(url))
        try:
            channel = connection.channel()
            channel.queue_declare(
                parked_queue("email"),
                durable=True,
                arguments={"x-queue-type": "classic", "x-queue-version": 1},
            )
            with pytest.raises(pika.exceptions.ChannelClosedByBroker) as refused:
                declare_topology(channel, DELAYS)
            assert refused.value.reply_code == 406
        finally:
            if connection.is_open:
                connection.close()
