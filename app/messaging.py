"""Publishing jobs to RabbitMQ, behind a small protocol with an in-memory twin.

The pika publisher keeps a small pool of connections, each with publisher confirms on. A
connection is used by one greenlet at a time (the pool hands it out) and is opened lazily, so a
gunicorn worker opens its own after the fork. Every publish has a time budget: past it the
connection is thrown away (its state is unknown mid-frame) and `PublishTimeout` is raised; the
caller leaves the notification pending for the outbox relay.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from typing import Any, Protocol

import gevent
import gevent.queue
import pika
import pika.exceptions
from pika.adapters.blocking_connection import BlockingChannel

from app.jobs import (
    CHANNELS,
    JOBS_EXCHANGE,
    PARKED_EXCHANGE,
    Job,
    encode_job,
    parked_queue,
    retry_queue,
    work_queue,
)

log = logging.getLogger(__name__)


class PublishError(Exception):
    """The broker did not confirm the jobs; they stay pending in the outbox."""


class PublishTimeout(PublishError):
    """The broker did not confirm within the time budget (down, slow, or blocked)."""


class BrokerUnavailable(PublishError):
    """No connection to the broker could be opened."""


class Publisher(Protocol):
    def publish(self, jobs: Sequence[Job], *, timeout: float) -> None:
        """Publish persistent jobs and return once the broker confirmed every one of them."""

    def close(self) -> None: ...


def connection_parameters(amqp_url: str, **overrides: Any) -> pika.URLParameters:
    params = pika.URLParameters(amqp_url)
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
    channel: BlockingChannel, retry_delays_ms: Iterable[int], *, queue_type: str = "classic"
) -> None:
    """Declare exchanges and queues (idempotent; every process calls it on connect)."""
    channel.exchange_declare(JOBS_EXCHANGE, exchange_type="direct", durable=True)
    channel.exchange_declare(PARKED_EXCHANGE, exchange_type="direct", durable=True)
    base_args: dict[str, Any] = {"x-queue-type": queue_type}
    for name in CHANNELS:
        channel.queue_declare(
            work_queue(name),
            durable=True,
            arguments={**base_args, "x-dead-letter-exchange": PARKED_EXCHANGE},
        )
        channel.queue_bind(work_queue(name), JOBS_EXCHANGE, routing_key=name)
        channel.queue_declare(parked_queue(name), durable=True, arguments=dict(base_args))
        channel.queue_bind(parked_queue(name), PARKED_EXCHANGE, routing_key=name)
        for delay in retry_delays_ms:
            # A retry queue has no consumer: the message waits out its TTL and is dead-lettered
            # back to the jobs exchange under its original routing key.
            channel.queue_declare(
                retry_queue(name, delay),
                durable=True,
                arguments={
                    **base_args,
                    "x-message-ttl": delay,
                    "x-dead-letter-exchange": JOBS_EXCHANGE,
                    "x-dead-letter-routing-key": name,
                },
            )


def job_properties(job: Job, headers: dict[str, Any] | None = None) -> pika.BasicProperties:
    return pika.BasicProperties(
        content_type="application/json",
        delivery_mode=pika.DeliveryMode.Persistent,
        message_id=job.notification_id,
        type=job.kind,
        headers=headers or {},
    )


class _Slot:
    """One pooled connection and its confirm-mode channel."""

    def __init__(self) -> None:
        self.connection: pika.BlockingConnection | None = None
        self.channel: BlockingChannel | None = None

    def discard(self) -> None:
        connection, self.connection, self.channel = self.connection, None, None
        if connection is not None and connection.is_open:
            # Closing waits for the broker's close-ok, which a blocked or dead broker never
            # sends: do it off the caller's path, with a bound.
            gevent.spawn(_close_quietly, connection)


def _close_quietly(connection: pika.BlockingConnection) -> None:
    try:
        with gevent.Timeout(5):
            connection.close()
    except BaseException:
        log.debug("closing a discarded broker connection failed", exc_info=True)


class PikaPublisher:
    def __init__(
        self,
        amqp_url: str,
        *,
        pool_size: int = 8,
        retry_delays_ms: Sequence[int] = (),
        queue_type: str = "classic",
    ) -> None:
        self._params = connection_parameters(amqp_url, name="offload-web")
        self._retry_delays_ms = tuple(retry_delays_ms)
        self._queue_type = queue_type
        self._slots: gevent.queue.LifoQueue[_Slot] = gevent.queue.LifoQueue()
        for _ in range(pool_size):
            self._slots.put(_Slot())
        self._topology_declared = False

    def _open(self, slot: _Slot) -> BlockingChannel:
        if slot.channel is not None and slot.channel.is_open:
            return slot.channel
        slot.discard()
        try:
            slot.connection = pika.BlockingConnection(self._params)
        except pika.exceptions.AMQPError as exc:
            raise BrokerUnavailable(f"cannot connect to the broker: {exc!r}") from exc
        channel = slot.connection.channel()
        channel.confirm_delivery()
        if not self._topology_declared:
            declare_topology(channel, self._retry_delays_ms, queue_type=self._queue_type)
            self._topology_declared = True
        slot.channel = channel
        return channel

    def publish(self, jobs: Sequence[Job], *, timeout: float) -> None:
        try:
            slot = self._slots.get(timeout=timeout)
        except gevent.queue.Empty:
            raise PublishTimeout("no publisher connection free within the budget") from None
        try:
            with gevent.Timeout(timeout, PublishTimeout(f"no confirm within {timeout:.3f}s")):
                channel = self._open(slot)
                for job in jobs:
                    # With confirms on, basic_publish returns once the broker has the message
                    # on disk (persistent, durable queue); mandatory catches a missing binding.
                    channel.basic_publish(
                        JOBS_EXCHANGE,
                        routing_key=job.kind,
                        body=encode_job(job),
                        properties=job_properties(job),
                        mandatory=True,
                    )
        except PublishError:
            slot.discard()
            raise
        except (pika.exceptions.AMQPError, OSError) as exc:
            slot.discard()
            raise PublishError(f"publish failed: {exc!r}") from exc
        finally:
            self._slots.put(slot)

    def close(self) -> None:
        while not self._slots.empty():
            self._slots.get_nowait().discard()


class InMemoryPublisher:
    """Test twin: records what was published, or fails as told."""

    def __init__(self, *, fail_with: PublishError | None = None) -> None:
        self.published: list[Job] = []
        self.fail_with = fail_with

    def publish(self, jobs: Sequence[Job], *, timeout: float) -> None:
        if self.fail_with is not None:
            raise self.fail_with
        self.published.extend(jobs)

    def close(self) -> None:
        pass
