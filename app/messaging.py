"""Publishing jobs to RabbitMQ, behind a small protocol with an in-memory twin.

Every publish is persistent, mandatory and confirmed, and has a time budget: past it
`PublishTimeout` is raised and the caller leaves the notification pending for the outbox relay.
A broker that is down or blocked (memory alarm) therefore never holds a request longer than the
budget.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import gevent
import gevent.event
import pika
import pika.exceptions
import pika.spec
from pika.adapters.gevent_connection import GeventConnection
from pika.channel import Channel

from app.events import EventMessage
from app.jobs import EVENTS_EXCHANGE, JOBS_EXCHANGE, Job, encode_job
from app.topology import cluster_parameters, declare_topology_once

log = logging.getLogger(__name__)


class PublishError(Exception):
    """The broker did not confirm the jobs; they stay pending in the outbox."""


class PublishTimeout(PublishError):
    """The broker did not confirm within the time budget (down, slow, or blocked)."""


class BrokerUnavailable(PublishError):
    """No connection to the broker could be opened."""


class Publisher(Protocol):
    def publish(
        self,
        jobs: Sequence[Job],
        *,
        timeout: float,
        on_confirmed: Callable[[], None] | None = None,
    ) -> None:
        """Publish persistent jobs.

        Without `on_confirmed`, return once the broker confirmed every one of them. With it,
        return as soon as they are written, and call `on_confirmed()` later, once the broker
        confirmed them all (never, if it refused or lost any: the outbox relay then publishes
        them again). Either way PublishError means they were not published.
        """

    def publish_events(
        self,
        events: Sequence[EventMessage],
        *,
        timeout: float,
        on_confirmed: Callable[[], None] | None = None,
    ) -> int:
        """Publish domain events to `offload.events` (persistent, mandatory, confirmed).

        Without `on_confirmed` (the relay), return once the broker confirmed every one, with
        how many no queue was bound to: an event nobody subscribes to is returned by the broker
        (mandatory) and still counts as published; on a topic exchange that is the normal case.
        With it (a queued registration's `user.registered`), return as soon as they are
        written (0), and call `on_confirmed()` once the broker confirmed them all and routed
        each to at least one queue: the channels' rows wait on that event, so one that reached
        no queue is left to the relay. PublishError means they were not published.
        """

    def warm_up(self) -> None:
        """Start connecting now, so the first request does not pay for it (never raises)."""

    def check(self, *, timeout: float) -> None:
        """Return once a channel to the broker is open; raise PublishError if none within
        `timeout` (readiness)."""

    def close(self) -> None: ...


def job_properties(job: Job, headers: dict[str, Any] | None = None) -> pika.BasicProperties:
    return pika.BasicProperties(
        content_type="application/json",
        delivery_mode=pika.DeliveryMode.Persistent,
        message_id=job.notification_id,
        type=job.kind,
        headers=headers or {},
    )


def event_properties(event: EventMessage) -> pika.BasicProperties:
    return pika.BasicProperties(
        content_type="application/json",
        delivery_mode=pika.DeliveryMode.Persistent,
        message_id=event.id,
        type=event.type,
        headers={},
    )


class Confirmations:
    """The broker's answers for the jobs of one `publish` call."""

    def __init__(
        self,
        count: int,
        on_confirmed: Callable[[], None] | None,
        *,
        unroutable_is_failure: bool = True,
    ) -> None:
        self.outstanding = count
        # Jobs must reach their queue; an event may have no subscriber (see publish_events).
        self.unroutable_is_failure = unroutable_is_failure
        self.unrouted = 0
        self.failure: PublishError | None = None
        self.on_confirmed = on_confirmed
        self.done = gevent.event.Event()

    def settle(self, failure: PublishError | None) -> None:
        if failure is not None and self.failure is None:
            self.failure = failure
        self.outstanding -= 1
        if self.outstanding > 0:
            return
        self.done.set()
        if self.failure is None and self.on_confirmed is not None:
            self.on_confirmed()
        elif self.failure is not None:
            log.debug("jobs not confirmed, left to the outbox relay: %s", self.failure)

    def wait(self) -> None:
        self.done.wait()
        if self.failure is not None:
            raise self.failure


class CoalescingGeventConnection(GeventConnection):
    """pika's gevent connection, sending what one turn of the hub wrote as one write.

    pika hands its transport each frame on its own (a message is three: method, header, body)
    and the transport sends each with a `send` of its own: three system calls and three TCP
    segments per message, each read and parsed apart by the broker. Fifty requests publishing in
    the same turn of the hub made 150 sends. Here the frames are gathered and handed over
    joined, at the end of the turn (a gevent callback, run before the hub waits for I/O), so
    the order of the frames is kept and no frame waits longer than that turn.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._outgoing: list[bytes] = []
        super().__init__(*args, **kwargs)

    def _adapter_emit_data(self, data: bytes) -> None:
        if not self._outgoing:
            gevent.get_hub().loop.run_callback(self._emit_outgoing)
        self._outgoing.append(data)

    def _emit_outgoing(self) -> None:
        data = b"".join(self._outgoing)
        self._outgoing.clear()
        # Gone meanwhile (the socket failed): the frames were for a connection that no longer
        # exists, and the close callback fails every confirm still awaited.
        if data and self._transport is not None:
            super()._adapter_emit_data(data)

    def _adapter_disconnect_stream(self) -> None:
        self._emit_outgoing()  # a Connection.Close still gathered goes out before the abort
        super()._adapter_disconnect_stream()


class PikaPublisher:
    """One asynchronous pika connection per process, with many confirms in flight.

    pika's gevent adapter runs the connection's I/O on the gevent hub. A publishing greenlet
    writes its frames and then either waits for its own delivery tags to be confirmed (the
    relay), or returns at once and has a callback run when they are (the request path: the
    outbox already guarantees the jobs, so the response need not wait for the broker's disk).
    Fifty concurrent requests share one connection without queueing behind each other's
    confirms. None of the adapter's calls used here yields to the
    hub, so each publish (tag assignment and frames) is atomic among greenlets: no two greenlets
    ever interleave on the channel.

    The connection is opened lazily and belongs to the process that opened it: after a fork
    (gunicorn workers) the child opens its own. When the broker cannot be reached, further
    publishes fail fast for `reconnect_pause` seconds instead of each paying a connect attempt.
    """

    def __init__(
        self,
        amqp_url: str,
        *,
        retry_delays_ms: Sequence[int] = (),
        queue_type: str = "classic",
        reconnect_pause: float = 1.0,
        name: str = "offload-web",
        webhooks: Sequence[str] = (),
    ) -> None:
        # AMQP_URL may list a cluster's nodes: one connection at a time, to the first that
        # answers; when it goes away the next connect starts from the following node.
        self._params = cluster_parameters(amqp_url, name=name)
        self._node = 0
        self._attempts_left = 0
        self._webhooks = tuple(webhooks)
        self._retry_delays_ms = tuple(retry_delays_ms)
        self._queue_type = queue_type
        self._reconnect_pause = reconnect_pause
        self._reset(os.getpid())

    def _reset(self, pid: int) -> None:
        self._pid = pid
        self._connection: GeventConnection | None = None
        self._channel: Channel | None = None
        self._connecting: gevent.event.Event | None = None
        self._last_error: str = ""
        self._unreachable_until = 0.0
        self._topology_declared = False
        self._next_tag = 0
        self._pending: dict[int, tuple[Confirmations, str]] = {}
        self._returned: set[str] = set()

    # -- publishing ----------------------------------------------------------------------------

    def warm_up(self) -> None:
        def connect() -> None:
            try:
                self._ready_channel()
            except PublishError as exc:
                log.warning("publisher warm-up: %s (requests will retry)", exc)

        gevent.spawn(connect)

    def check(self, *, timeout: float) -> None:
        with gevent.Timeout(timeout, PublishTimeout(f"no channel within {timeout:.3f}s")):
            self._ready_channel()

    def publish(
        self,
        jobs: Sequence[Job],
        *,
        timeout: float,
        on_confirmed: Callable[[], None] | None = None,
    ) -> None:
        waiting_for = "a connection" if on_confirmed else "a confirm"
        with gevent.Timeout(timeout, PublishTimeout(f"no {waiting_for} within {timeout:.3f}s")):
            channel = self._ready_channel()
            confirmations = Confirmations(len(jobs), on_confirmed)
            for job in jobs:
                self._publish_one(channel, job, confirmations)
            if on_confirmed is None:
                confirmations.wait()

    def publish_events(
        self,
        events: Sequence[EventMessage],
        *,
        timeout: float,
        on_confirmed: Callable[[], None] | None = None,
    ) -> int:
        waiting_for = "a connection" if on_confirmed else "a confirm"
        with gevent.Timeout(timeout, PublishTimeout(f"no {waiting_for} within {timeout:.3f}s")):
            channel = self._ready_channel()
            confirmations = Confirmations(
                len(events), on_confirmed, unroutable_is_failure=on_confirmed is not None
            )
            for event in events:
                self._publish_raw(
                    channel,
                    EVENTS_EXCHANGE,
                    event.type,
                    event.body,
                    event_properties(event),
                    confirmations,
                )
            if on_confirmed is not None:
                return 0
            # Pipelined: every event of the batch in flight at once, one wait for them all.
            confirmations.wait()
            return confirmations.unrouted

    def _publish_one(self, channel: Channel, job: Job, confirmations: Confirmations) -> None:
        self._publish_raw(
            channel, JOBS_EXCHANGE, job.kind, encode_job(job), job_properties(job), confirmations
        )

    def _publish_raw(
        self,
        channel: Channel,
        exchange: str,
        routing_key: str,
        body: bytes,
        properties: pika.BasicProperties,
        confirmations: Confirmations,
    ) -> None:
        self._next_tag += 1
        assert properties.message_id is not None
        self._pending[self._next_tag] = (confirmations, properties.message_id)
        try:
            channel.basic_publish(
                exchange,
                routing_key=routing_key,
                body=body,
                properties=properties,
                mandatory=True,  # an unroutable message comes back instead of vanishing
            )
        except (pika.exceptions.AMQPError, OSError) as exc:
            self._pending.pop(self._next_tag, None)
            raise PublishError(f"publish failed: {exc!r}") from exc

    def _ready_channel(self) -> Channel:
        if self._pid != os.getpid():
            self._reset(os.getpid())  # forked: the parent's connection is not ours to use
        if self._channel is not None and self._channel.is_open:
            return self._channel
        if time.monotonic() < self._unreachable_until:
            raise BrokerUnavailable(f"broker unreachable: {self._last_error}")
        connecting = self._connecting
        if connecting is None:
            connecting = self._connecting = gevent.event.Event()
            self._attempts_left = len(self._params)
            # Connecting (topology included) runs in a greenlet of its own, bounded by pika's
            # socket and stack timeouts: a publisher's budget only stops its own wait, and can
            # never fire in the middle of the connect and leave it half done.
            gevent.spawn(self._connect)
        connecting.wait()
        if self._channel is None or not self._channel.is_open:
            raise BrokerUnavailable(f"broker unreachable: {self._last_error}")
        return self._channel

    # -- connection life cycle (callbacks run on the gevent hub) ------------------------------

    def _connect(self) -> None:
        # Whatever happens here, the greenlets waiting for the connection are released: by
        # pika's callbacks once it holds the connection, otherwise by `_connect_failed`.
        params = self._params[self._node % len(self._params)]
        handed_to_pika = False
        error, retry = "connecting was interrupted", False
        try:
            if not self._topology_declared:
                declare_topology_once(
                    params, self._retry_delays_ms, self._queue_type, self._webhooks
                )
                self._topology_declared = True
            self._connection = CoalescingGeventConnection(
                params,
                on_open_callback=self._on_connection_open,
                on_open_error_callback=lambda _conn, exc: self._connect_failed(repr(exc)),
                on_close_callback=self._on_connection_closed,
            )
            handed_to_pika = True
        except (pika.exceptions.AMQPError, OSError) as exc:
            error, retry = repr(exc), True
        finally:
            if not handed_to_pika:
                self._connect_failed(error, retry=retry)

    def _connect_failed(self, error: str, *, retry: bool = True) -> None:
        log.warning("cannot connect to the broker: %s", error)
        self._last_error = error
        self._connection = None
        self._node += 1
        self._attempts_left -= 1
        if retry and self._attempts_left > 0:
            gevent.spawn(self._connect)  # the next node of the list; the waiters keep waiting
            return
        self._unreachable_until = time.monotonic() + self._reconnect_pause
        self._finish_connecting()

    def _finish_connecting(self) -> None:
        connecting, self._connecting = self._connecting, None
        if connecting is not None:
            connecting.set()

    def _on_connection_open(self, connection: GeventConnection) -> None:
        connection.channel(on_open_callback=self._on_channel_open)

    def _on_channel_open(self, channel: Channel) -> None:
        channel.add_on_close_callback(self._on_channel_closed)
        channel.add_on_return_callback(self._on_return)

        def confirming(_frame: Any) -> None:
            self._next_tag = 0
            self._channel = channel
            self._finish_connecting()

        channel.confirm_delivery(ack_nack_callback=self._on_confirm, callback=confirming)

    def _on_confirm(self, frame: Any) -> None:
        method = frame.method
        acked = isinstance(method, pika.spec.Basic.Ack)
        tags = (
            [tag for tag in self._pending if tag <= method.delivery_tag]
            if method.multiple
            else [method.delivery_tag]
        )
        for tag in tags:
            entry = self._pending.pop(tag, None)
            if entry is None:
                continue  # its publisher gave up (timeout) long ago
            confirmations, message_id = entry
            if message_id in self._returned:
                self._returned.discard(message_id)
                confirmations.unrouted += 1
                if confirmations.unroutable_is_failure:
                    confirmations.settle(PublishError("the broker could not route the job"))
                else:
                    confirmations.settle(None if acked else PublishError("refused (nack)"))
            elif acked:
                confirmations.settle(None)
            else:
                confirmations.settle(PublishError("the broker refused the job (nack)"))

    def _on_return(self, _channel: Channel, _method: Any, properties: Any, _body: bytes) -> None:
        # Basic.Return comes before the Ack of the same message.
        self._returned.add(properties.message_id)

    def _on_channel_closed(self, _channel: Channel, reason: Exception) -> None:
        self._fail_pending(f"channel closed: {reason!r}")
        self._channel = None
        if self._connection is not None and self._connection.is_open:
            self._connection.close()

    def _on_connection_closed(self, _connection: GeventConnection, reason: Exception) -> None:
        closed_by_us = isinstance(reason, pika.exceptions.ConnectionClosedByClient)
        log.log(
            logging.INFO if closed_by_us else logging.WARNING,
            "broker connection closed: %r",
            reason,
        )
        self._fail_pending(f"connection closed: {reason!r}")
        if not closed_by_us:
            self._node += 1  # that node may be gone: try the next one first
        self._channel = None
        self._connection = None
        self._last_error = repr(reason)
        self._finish_connecting()

    def _fail_pending(self, reason: str) -> None:
        pending, self._pending = self._pending, {}
        for confirmations, _message_id in pending.values():
            confirmations.settle(PublishError(reason))
        self._returned.clear()

    def close(self) -> None:
        connection = self._connection
        if connection is not None and connection.is_open:
            connection.close()
            with gevent.Timeout(5, False):
                while self._connection is not None:
                    gevent.sleep(0.01)


class InMemoryPublisher:
    """Test twin: records what was published, or fails as told."""

    def __init__(self, *, fail_with: PublishError | None = None) -> None:
        self.published: list[Job] = []
        self.events: list[EventMessage] = []
        self.fail_with = fail_with

    def publish_events(
        self,
        events: Sequence[EventMessage],
        *,
        timeout: float,
        on_confirmed: Callable[[], None] | None = None,
    ) -> int:
        if self.fail_with is not None:
            raise self.fail_with
        self.events.extend(events)
        if on_confirmed is not None:
            on_confirmed()  # an in-memory broker confirms at once, and every key is bound
        return 0

    def publish(
        self,
        jobs: Sequence[Job],
        *,
        timeout: float,
        on_confirmed: Callable[[], None] | None = None,
    ) -> None:
        if self.fail_with is not None:
            raise self.fail_with
        self.published.extend(jobs)
        if on_confirmed is not None:
            on_confirmed()  # an in-memory broker confirms at once

    def warm_up(self) -> None:
        pass

    def check(self, *, timeout: float) -> None:
        if self.fail_with is not None:
            raise self.fail_with

    def close(self) -> None:
        pass
