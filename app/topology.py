"""The broker's topology: how to reach it, and the exchanges and queues every process declares.

Shared by the publisher, the consumers, the parked-jobs tool and the benchmark; the names
themselves are the message contract in `app/jobs.py`.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from typing import Any

import pika
import pika.exceptions
from pika.adapters.blocking_connection import BlockingChannel

from app.events import USER_REGISTERED
from app.jobs import (
    CHANNELS,
    EVENTS_EXCHANGE,
    JOBS_EXCHANGE,
    PARKED_EXCHANGE,
    WEBHOOK_BINDING,
    parked_queue,
    retry_queue,
    work_queue,
)

log = logging.getLogger(__name__)

# Classic queues in RabbitMQ's version 2 layout (3.10 and later; the default since 3.13 and the
# only one since 4.3). It takes in a persistent message for less of the broker's CPU than version
# 1 (10-40% less, by the hour: `python -m bench.broker_intake`), and that intake is most of what
# a queued registration costs the broker while the load lasts; delivering it costs a little
# more, once the load has eased. An argument rather than a policy, so a new broker needs no setup.
CLASSIC_QUEUE_VERSION = 2
# And in lazy mode: a message goes to disk as it arrives (a persistent one is written anyway) and
# is read back when a consumer asks for it, instead of being held in the queue process's memory
# as well. Under load the consumers wait and the work queues grow by thousands; held in memory,
# they made each queue's heap, and every garbage collection of it, larger: about 30% of the
# broker's CPU while the load lasted, on its dirty schedulers (microstate accounting), and none
# in lazy mode. The intake costs half as much, the delivery a sixth more, and the total less
# (`python -m bench.broker_intake`). RabbitMQ 3.12 and later ignore the mode: their classic
# queues work this way by default.
CLASSIC_QUEUE_MODE = "lazy"
# What every classic queue is declared with beyond its own arguments; a queue an older version
# declared without one of them is kept as it is (`declare_queue`).
CLASSIC_LAYOUT: dict[str, Any] = {
    "x-queue-version": CLASSIC_QUEUE_VERSION,
    "x-queue-mode": CLASSIC_QUEUE_MODE,
}


def amqp_urls(amqp_url: str) -> list[str]:
    """AMQP_URL names one broker, or the nodes of a cluster separated by commas."""
    return [url.strip() for url in amqp_url.split(",") if url.strip()]


def cluster_parameters(amqp_url: str, **overrides: Any) -> list[pika.URLParameters]:
    """One set of parameters per node in AMQP_URL, in its order: pika's BlockingConnection
    tries them in turn and keeps the first that answers."""
    return [connection_parameters(url, **overrides) for url in amqp_urls(amqp_url)]


def connection_parameters(amqp_url: str, **overrides: Any) -> pika.URLParameters:
    """Parameters for the first (or only) broker in `amqp_url`."""
    params = pika.URLParameters(amqp_urls(amqp_url)[0])
    # A dead broker is noticed within a minute, and a blocked one (memory or disk alarm) never
    # holds a caller forever.
    params.heartbeat = overrides.get("heartbeat", 30)
    params.blocked_connection_timeout = overrides.get("blocked_connection_timeout", 30)
    params.socket_timeout = overrides.get("socket_timeout", 5)
    params.stack_timeout = overrides.get("stack_timeout", 10)
    params.connection_attempts = overrides.get("connection_attempts", 1)
    params.client_properties = {"connection_name": overrides.get("name", "offload")}
    return params


def declare_topology(
    channel: BlockingChannel,
    retry_delays_ms: Iterable[int],
    *,
    queue_type: str = "classic",
    webhooks: Sequence[str] = (),
) -> None:
    """Declare exchanges and queues (idempotent; every process calls it on connect), and the
    queues of the webhook endpoints named in `webhooks` (app.jobs.webhook_name)."""
    retry_delays_ms = tuple(retry_delays_ms)
    channel.exchange_declare(JOBS_EXCHANGE, exchange_type="direct", durable=True)
    channel.exchange_declare(PARKED_EXCHANGE, exchange_type="direct", durable=True)
    # Domain events: every subscriber binds its own queue by routing key (user.#, ...).
    channel.exchange_declare(EVENTS_EXCHANGE, exchange_type="topic", durable=True)
    base_args: dict[str, Any] = {"x-queue-type": queue_type}
    if queue_type == "classic":
        base_args.update(CLASSIC_LAYOUT)
    # Queues that dead-letter: a classic queue does it at most once (a dead-lettered message
    # that cannot be delivered is lost; the relay's sweeper finds its row). A quorum queue can
    # do it at least once, which RabbitMQ allows only with overflow reject-publish (with the
    # default drop-head it falls back to at most once).
    dead_lettering: dict[str, Any] = (
        {"x-dead-letter-strategy": "at-least-once", "x-overflow": "reject-publish"}
        if queue_type == "quorum"
        else {}
    )
    for name in CHANNELS:
        declare_channel_work_queue(
            channel,
            name,
            {
                **base_args,
                **dead_lettering,
                "x-dead-letter-exchange": PARKED_EXCHANGE,
                # What the broker dead-letters (a policy's length limit or message TTL, a quorum
                # queue's delivery limit) keeps its routing key unless told otherwise; a
                # `user.registered` event's key names no parking queue, and it would be dropped.
                "x-dead-letter-routing-key": name,
            },
        )
        channel.queue_bind(work_queue(name), JOBS_EXCHANGE, routing_key=name)
        # A registration's one message: each channel subscribes to it like any other listener.
        channel.queue_bind(work_queue(name), EVENTS_EXCHANGE, routing_key=USER_REGISTERED)
        declare_queue(channel, parked_queue(name), base_args)
        channel.queue_bind(parked_queue(name), PARKED_EXCHANGE, routing_key=name)
        # Back to the jobs exchange under the job's own routing key.
        declare_retry_queues(
            channel, name, retry_delays_ms, {**base_args, **dead_lettering}, JOBS_EXCHANGE, name
        )
    for name in webhooks:
        declare_webhook_queues(channel, name, retry_delays_ms, base_args, dead_lettering)


def declare_channel_work_queue(
    channel: BlockingChannel, name: str, arguments: dict[str, Any]
) -> None:
    """Declare a channel's work queue, accepting one declared before it dead-lettered under
    the channel's name (see `declare_queue`)."""
    declare_queue(channel, work_queue(name), arguments, added_since=("x-dead-letter-routing-key",))


# What a queue an older version declared may lack, and what keeping it as it is means. A
# queue's arguments are fixed when it is created: redeclaring it with other arguments is
# refused with PRECONDITION_FAILED, which closes the channel, and refusing to start on such a
# broker would stop every process at once.
WITHOUT = {
    "x-dead-letter-routing-key": (
        "an event the broker dead-letters from it is dropped instead of parked (the relay's "
        "sweeper sends its rows again). Drain and delete the queue to have it declared anew."
    ),
    "x-queue-version": (
        "it keeps RabbitMQ's version 1 layout, which takes in each message for more of the "
        "broker's CPU. A policy with `queue-version: 2` converts it in place."
    ),
    "x-queue-mode": (
        "it keeps every message in the queue process's memory as well, which takes in each "
        "message for more of the broker's CPU while a backlog grows. A policy with "
        "`queue-mode: lazy` converts it in place (RabbitMQ 3.12 and later ignore the mode)."
    ),
}


def declare_queue(
    channel: BlockingChannel,
    queue: str,
    arguments: dict[str, Any],
    *,
    added_since: Sequence[str] = (),
) -> None:
    """Declare a durable queue, accepting one an older version declared without the classic
    queue version or mode, or any of the arguments named in `added_since`.

    The declaration is tried on a channel of its own; if the broker's only objection is that
    such an argument is missing, the queue is taken as it is and a warning says so. Any other
    difference (a classic queue where QUEUE_TYPE asks for quorum) is still refused.
    """
    tolerated = {*CLASSIC_LAYOUT, *added_since}
    wanted = dict(arguments)
    while True:
        try:
            _declare_on_a_channel_of_its_own(channel, queue, wanted)
            return
        except pika.exceptions.ChannelClosedByBroker as refused:
            missing = next(
                (
                    key
                    for key in tolerated
                    if key in wanted
                    and f"'{key}'" in refused.reply_text
                    and "current is none" in refused.reply_text
                ),
                None,
            )
            if refused.reply_code != 406 or missing is None:
                raise
            del wanted[missing]
            log.warning(
                "queue %s was declared without %s=%s: %s",
                queue,
                missing,
                arguments[missing],
                WITHOUT[missing],
            )


def _declare_on_a_channel_of_its_own(
    channel: BlockingChannel, queue: str, arguments: dict[str, Any]
) -> None:
    own = channel.connection.channel()
    try:
        own.queue_declare(queue, durable=True, arguments=arguments)
    finally:
        if own.is_open:
            own.close()


def declare_webhook_queues(
    channel: BlockingChannel,
    name: str,
    retry_delays_ms: Iterable[int],
    base_args: dict[str, Any],
    dead_lettering: dict[str, Any],
) -> None:
    """One endpoint's queues: the work queue bound to `user.#` on offload.events, its retry
    queues, its parking queue.

    Its messages keep their event's routing key (user.registered, ...), which names no queue
    of this endpoint; so the work queue dead-letters to the parking queue under the endpoint's
    name, and a retry goes back through the default exchange straight to the work queue (back
    through offload.events it would reach every other subscriber again).
    """
    declare_queue(
        channel,
        work_queue(name),
        {
            **base_args,
            **dead_lettering,
            "x-dead-letter-exchange": PARKED_EXCHANGE,
            "x-dead-letter-routing-key": name,
        },
    )
    channel.queue_bind(work_queue(name), EVENTS_EXCHANGE, routing_key=WEBHOOK_BINDING)
    declare_queue(channel, parked_queue(name), base_args)
    channel.queue_bind(parked_queue(name), PARKED_EXCHANGE, routing_key=name)
    # Back through the default exchange, straight to this endpoint's work queue.
    declare_retry_queues(
        channel, name, retry_delays_ms, {**base_args, **dead_lettering}, "", work_queue(name)
    )


def declare_topology_once(
    params: pika.URLParameters | Sequence[pika.URLParameters],
    retry_delays_ms: Sequence[int],
    queue_type: str,
    webhooks: Sequence[str] = (),
) -> None:
    """Declare the topology over a short-lived blocking connection."""
    connection = pika.BlockingConnection(params)
    try:
        declare_topology(
            connection.channel(), retry_delays_ms, queue_type=queue_type, webhooks=webhooks
        )
    finally:
        connection.close()


def declare_retry_queues(
    channel: BlockingChannel,
    name: str,
    retry_delays_ms: Iterable[int],
    arguments: dict[str, Any],
    back_to_exchange: str,
    back_to_routing_key: str,
) -> None:
    """One retry queue per delay. A retry queue has no consumer: the message waits out its TTL
    and is dead-lettered to `back_to_exchange` under `back_to_routing_key`."""
    for delay in retry_delays_ms:
        declare_queue(
            channel,
            retry_queue(name, delay),
            {
                **arguments,
                "x-message-ttl": delay,
                "x-dead-letter-exchange": back_to_exchange,
                "x-dead-letter-routing-key": back_to_routing_key,
            },
        )
