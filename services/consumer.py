"""The consume loop: one process per job type, many sends at once, acks after the work.

Threading model (under gevent): the main greenlet owns the pika connection and both channels
and is the only one that touches them. Deliveries go onto a local queue. A claiming greenlet
takes everything waiting there and claims it in one transaction, then starts one greenlet per
send (at most `concurrency` sent and not yet recorded at once: so many at most can go out twice
if the process dies). A recording greenlet takes every finished send and
records them in one transaction. Under load both batches grow by themselves, so the ledger
costs a fraction of a millisecond per job; with one job at a time it is one claim and one
record. Verdicts go back with `add_callback_threadsafe`, which wakes the main greenlet to
schedule retries, park, and ack (one frame for a run of deliveries where it can).

Shutdown is two-step: the first SIGTERM cancels the subscription, requeues what was delivered
but not started, lets in-flight sends finish (bounded) and exits 0; a second exits at once (the
broker requeues whatever was unacked).
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import gevent
import gevent.lock
import gevent.queue
import pika
import pika.exceptions
from pika.adapters.blocking_connection import BlockingChannel
from pika.spec import Basic, BasicProperties
from sqlalchemy.orm import Session, sessionmaker

from app.jobs import PARKED_EXCHANGE, retry_queue, work_queue
from app.senders import Sender
from app.shutdown import on_stop_signals
from app.topology import cluster_parameters, declare_topology
from services.handlers import (
    VERDICTS,
    Handler,
    NotificationHandler,
    Park,
    Retry,
    RetryPolicy,
    Verdict,
)
from services.metrics import JOB_SECONDS, JOBS

log = logging.getLogger(__name__)

RECONNECT_BACKOFF_START = 0.5
RECONNECT_BACKOFF_CAP = 30.0
DRAIN_SECONDS = 30.0
# Group commit: how long a claim or a record waits for the deliveries or results arriving
# alongside it, when there is other work in flight. On SQLite every transaction of the consumers
# also costs the web process (its writes wait for the lock, its page cache is invalidated), so
# fewer, larger ones pay twice; 10 ms is small beside a send's 50 ms.
LINGER_SECONDS = 0.01
# A record gathers the sends finishing alongside it for as long, no longer: a longer wait widens
# the one window that remains (a send the server accepted but the ledger has not recorded is
# sent again after a crash). `make soak`'s consumer SIGKILL at about 290 requests a second: 29
# resends with a 50 ms record linger, 0 with 10 ms; consumers' CPU per queued registration at
# c=50, 1.59 against 1.62-1.75 ms once the record finds its rows by index.
RECORD_LINGER_SECONDS = LINGER_SECONDS


@dataclass
class Delivery:
    generation: int
    delivery_tag: int
    body: bytes
    properties: BasicProperties


class Consumer:
    def __init__(
        self,
        *,
        channel: str,
        amqp_url: str,
        sender: Sender[Any] | None = None,
        sessions: sessionmaker[Session],
        policy: RetryPolicy,
        concurrency: int,
        prefetch: int,
        queue_type: str = "classic",
        handler: Handler | None = None,
        webhooks: Sequence[str] = (),
    ) -> None:
        """Consume `channel`'s work queue: email and SMS jobs with `sender`, or any other
        queue with its `handler` (a webhook endpoint's, services/webhooks.py). `webhooks`
        names the endpoints whose queues the topology declares too."""
        self.channel_name = channel
        self.queue = work_queue(channel)
        if handler is None:
            assert sender is not None, "a sender, or a handler"
            handler = NotificationHandler(channel, sender, sessions, policy)
        self.handler = handler
        self.webhooks = tuple(webhooks)
        self.sessions = sessions
        self.policy = policy
        self.concurrency = concurrency
        self.prefetch = prefetch
        self.queue_type = queue_type
        # The metrics' children for this channel, looked up once: `labels` costs a lock and a
        # lookup on every job.
        self._job_seconds = JOB_SECONDS.labels(channel)
        self._jobs = {outcome: JOBS.labels(channel, outcome) for outcome in OUTCOMES}
        # One entry per node listed in AMQP_URL: pika connects to the first that answers.
        self.params = cluster_parameters(amqp_url, name=f"offload-consumer-{channel}")
        self._work: gevent.queue.Queue[Delivery] = gevent.queue.Queue()
        self._results: gevent.queue.Queue[tuple[Delivery, Any]] = gevent.queue.Queue()
        # A slot is taken before a send and given back once its result is recorded, not when
        # the send ends: a message the server accepted and the ledger has not yet recorded is
        # sent again if this process dies, and the slots bound how many there can be
        # (`concurrency`) whatever the sends' speed and the record's linger.
        self._send_slots = gevent.lock.BoundedSemaphore(concurrency)
        self._sending = 0  # sends under way (their slots held, no result yet)
        # Delivery tags received on the current connection and not yet acked or nacked.
        self._unsettled: set[int] = set()
        self._in_flight = 0
        self._stopping = False
        # Bumped on every reconnect: a verdict for a delivery from an older connection is
        # dropped, since its delivery tag means nothing on the new one (the broker redelivers).
        self._generation = 0
        self._connection: pika.BlockingConnection | None = None
        self._consume_channel: BlockingChannel | None = None
        self._publish_channel: BlockingChannel | None = None
        self._consumer_tag: str | None = None

    # -- lifecycle ---------------------------------------------------------------------------

    def request_stop(self) -> None:
        log.info("stop requested: finishing in-flight jobs", extra={"in_flight": self._in_flight})
        self._stopping = True

    def run(self) -> None:
        """Consume until stopped, reconnecting with capped backoff when the broker goes away."""
        workers = [gevent.spawn(self._claim_loop), gevent.spawn(self._record_loop)]
        backoff = RECONNECT_BACKOFF_START
        try:
            while not self._stopping:
                try:
                    self._connect()
                    backoff = RECONNECT_BACKOFF_START
                    self._consume_until_stopped()
                    self._drain()
                except (pika.exceptions.AMQPError, OSError) as exc:
                    self._forget_connection()
                    if self._stopping:
                        break
                    log.warning("broker connection lost (%r); reconnecting in %.1fs", exc, backoff)
                    gevent.sleep(backoff)
                    backoff = min(backoff * 2, RECONNECT_BACKOFF_CAP)
        finally:
            gevent.killall(workers, timeout=1)
            self._close()

    def _connect(self) -> None:
        self._generation += 1
        self._connection = pika.BlockingConnection(self.params)
        publish_channel = self._connection.channel()
        publish_channel.confirm_delivery()
        declare_topology(
            publish_channel,
            self.policy.delays_ms,
            queue_type=self.queue_type,
            webhooks=self.webhooks,
        )
        consume_channel = self._connection.channel()
        consume_channel.basic_qos(prefetch_count=self.prefetch)
        self._consumer_tag = consume_channel.basic_consume(self.queue, self._on_message)
        self._publish_channel, self._consume_channel = publish_channel, consume_channel
        node = self._connection._impl.params  # which of the listed nodes answered
        log.info(
            "consuming %s on %s:%s",
            self.queue,
            node.host,
            node.port,
            extra={"concurrency": self.concurrency, "prefetch": self.prefetch},
        )

    def _consume_until_stopped(self) -> None:
        assert self._connection is not None and self._consume_channel is not None
        while not self._stopping:
            self._connection.process_data_events(time_limit=1)
            if not self._consume_channel.consumer_tags:
                # The broker cancelled us (queue deleted, node failover): subscribe again.
                raise pika.exceptions.ConsumerCancelled("subscription cancelled by the broker")

    def _drain(self) -> None:
        """Stop receiving, requeue what no worker started, wait for the sends in flight."""
        assert self._connection is not None and self._consume_channel is not None
        if self._consumer_tag is not None:
            self._consume_channel.basic_cancel(self._consumer_tag)
        while not self._work.empty():
            delivery = self._work.get_nowait()
            self._unsettled.discard(delivery.delivery_tag)
            self._consume_channel.basic_nack(delivery.delivery_tag, requeue=True)
        deadline = time.monotonic() + DRAIN_SECONDS
        while self._in_flight and time.monotonic() < deadline:
            self._connection.process_data_events(time_limit=0.1)
        self._connection.process_data_events(time_limit=0)

    def _forget_connection(self) -> None:
        self._connection = self._consume_channel = self._publish_channel = None
        self._unsettled.clear()
        # Deliveries not yet started belong to the dead connection: the broker redelivers them.
        while not self._work.empty():
            self._work.get_nowait()

    def _close(self) -> None:
        if self._connection is not None and self._connection.is_open:
            try:
                self._connection.close()
            except (pika.exceptions.AMQPError, OSError):
                log.debug("closing the connection failed", exc_info=True)
        self._forget_connection()

    # -- messages ----------------------------------------------------------------------------

    def _on_message(
        self,
        _channel: BlockingChannel,
        method: Basic.Deliver,
        properties: BasicProperties,
        body: bytes,
    ) -> None:
        self._unsettled.add(method.delivery_tag)
        self._work.put(Delivery(self._generation, method.delivery_tag, body, properties))

    def _claim_loop(self) -> None:
        """Take every delivery waiting, claim them in one transaction, start their sends."""
        linger = 0.0
        while True:
            batch: list[Delivery] = _take_batch(self._work, linger=linger, limit=self.prefetch)
            # Wait for company only while deliveries come together: one at a time (a light
            # load), each is claimed at once, since the wait would be all of its delay (10 ms
            # of a paced delivery's 21 at 17 a second); several at once, the next claim
            # gathers more by waiting.
            linger = LINGER_SECONDS if len(batch) > 1 and self._in_flight > 0 else 0.0
            self._in_flight += len(batch)
            try:
                decided = self.handler.claim([delivery.body for delivery in batch])
            except Exception as exc:
                log.exception("claiming %d %s jobs failed", len(batch), self.channel_name)
                retry = Retry(self.policy.delay_after(1), f"unexpected error: {exc!r}")
                decided = [retry] * len(batch)
            settled_now: list[tuple[Delivery, Verdict]] = []
            for delivery, decision in zip(batch, decided, strict=True):
                if isinstance(decision, VERDICTS):
                    settled_now.append((delivery, decision))
                else:
                    self._send_slots.acquire()
                    gevent.spawn(self._send, delivery, decision)
            if settled_now:
                self._hand_over(settled_now)

    def _send(self, delivery: Delivery, claim: Any) -> None:
        self._sending += 1
        try:
            with self._job_seconds.time():
                result = self.handler.send(claim)  # never raises: errors are results
        except BaseException:
            self._send_slots.release()  # nothing to record: the broker redelivers the job
            raise
        finally:
            self._sending -= 1
        self._results.put((delivery, result))

    def _record_loop(self) -> None:
        """Record every finished send in one transaction, then hand the verdicts over."""
        while True:
            self._results.peek()  # a result is in: the linger is decided from now on
            finished: list[tuple[Delivery, Any]] = _take_batch(
                self._results, linger=self._record_linger(), limit=None
            )
            try:
                verdicts: list[Verdict] = self.handler.record(
                    [result for _delivery, result in finished]
                )
            except Exception as exc:
                # Not recorded: the message comes back after the delay, by when the send lease
                # has run out, and the ledger decides again.
                log.exception("recording %d %s results failed", len(finished), self.channel_name)
                retry = Retry(self.policy.delay_after(1), f"could not record the result: {exc!r}")
                verdicts = [retry] * len(finished)
            finally:
                for _finished in finished:
                    self._send_slots.release()
            self._hand_over(
                [
                    (delivery, verdict)
                    for (delivery, _result), verdict in zip(finished, verdicts, strict=True)
                ]
            )

    def _record_linger(self) -> float:
        """The record's wait for company, once a result is in: RECORD_LINGER_SECONDS
        while other sends are under way, unless every slot is taken. The claims then wait for
        the slots this record gives back, and the linger would hold every new send back as long:
        one process with 10 sends of 50 ms at once drained 150 jobs a second so, 180 without
        (`python -m bench.dispatch`, scaling, alternating)."""
        if not self._sending or self._send_slots.counter == 0:
            return 0.0
        return RECORD_LINGER_SECONDS

    def _hand_over(self, settled: list[tuple[Delivery, Verdict]]) -> None:
        """Pass verdicts to the main greenlet, which alone may touch the channels."""
        self._in_flight -= len(settled)
        connection = self._connection
        current = [pair for pair in settled if pair[0].generation == self._generation]
        if connection is None or not current:
            return  # from an older connection: the broker redelivers those
        try:
            connection.add_callback_threadsafe(functools.partial(self._settle, current))
        except (pika.exceptions.AMQPError, OSError):
            log.debug("connection gone before settling; the broker redelivers", exc_info=True)

    def _settle(self, settled: list[tuple[Delivery, Verdict]]) -> None:
        """Runs on the main greenlet: carry out the verdicts, then ack the deliveries."""
        if self._consume_channel is None:
            return
        current = [pair for pair in settled if pair[0].generation == self._generation]
        if not current:
            return
        assert self._publish_channel is not None
        acked: list[int] = []
        for delivery, verdict in current:
            copied = True
            if isinstance(verdict, Retry):
                copied = self._publish_copy(
                    "",
                    retry_queue(self.channel_name, verdict.delay_ms),
                    delivery.body,
                    _with_headers(
                        delivery.properties, {"x-offload-last-error": verdict.reason[:500]}
                    ),
                )
            elif isinstance(verdict, Park):
                log.warning("parking a %s job: %s", self.channel_name, verdict.reason)
                copied = self._publish_copy(
                    PARKED_EXCHANGE,
                    self.channel_name,
                    delivery.body,
                    _with_headers(
                        delivery.properties,
                        {
                            "x-offload-reason": verdict.reason[:500],
                            "x-offload-parked-at": int(time.time()),
                        },
                    ),
                )
            if copied:
                acked.append(delivery.delivery_tag)
                self._jobs[_outcome(verdict)].inc()
            else:
                # No copy anywhere: give the original back to the queue rather than lose it.
                self._unsettled.discard(delivery.delivery_tag)
                self._consume_channel.basic_nack(delivery.delivery_tag, requeue=True)
        # Ack only after the retry or parked copies are confirmed: a crash in between leaves
        # the originals to be redelivered, never lost.
        if acked:
            self._ack(acked)

    def _publish_copy(
        self, exchange: str, routing_key: str, body: bytes, properties: pika.BasicProperties
    ) -> bool:
        """Publish a retry or parked copy, mandatory and confirmed; whether the broker took it.

        Without `mandatory` a copy the broker cannot route (its retry queue deleted, a policy
        gone) is dropped in silence and the job is lost. Returned, the topology is declared
        again and the copy published once more.
        """
        assert self._publish_channel is not None
        for attempt in (1, 2):
            try:
                self._publish_channel.basic_publish(
                    exchange,
                    routing_key=routing_key,
                    body=body,
                    properties=properties,
                    mandatory=True,
                )
                return True
            except pika.exceptions.UnroutableError:
                log.error("the broker could not route a copy to %r", routing_key or exchange)
                if attempt == 1:
                    declare_topology(
                        self._publish_channel,
                        self.policy.delays_ms,
                        queue_type=self.queue_type,
                        webhooks=self.webhooks,
                    )
            except pika.exceptions.NackError:
                log.error("the broker refused a copy for %r", routing_key or exchange)
                return False
        return False

    def _ack(self, tags: list[int]) -> None:
        """Ack these deliveries: those older than every unsettled delivery with one frame
        (`multiple`), each of the others with its own. Each frame is a write and a turn of
        pika's loop, and with 50 sends at once some older delivery is nearly always still
        being sent."""
        assert self._consume_channel is not None
        self._unsettled.difference_update(tags)
        oldest_unsettled = min(self._unsettled, default=None)
        newer = [] if oldest_unsettled is None else [t for t in tags if t > oldest_unsettled]
        older = [t for t in tags if oldest_unsettled is None or t < oldest_unsettled]
        if older:
            self._consume_channel.basic_ack(max(older), multiple=True)
        for tag in newer:
            self._consume_channel.basic_ack(tag)


T = TypeVar("T")


def _take_batch(queue: gevent.queue.Queue[T], *, linger: float, limit: int | None) -> list[T]:
    """Wait for one item, then take every item waiting (at most `limit`).

    Group commit: with `linger` seconds (0 when no other work is in flight) it first gives
    the items arriving alongside a moment, so one transaction and one ack frame serve several
    jobs.
    """
    batch = [queue.get()]
    if linger:
        gevent.sleep(linger)
    while (limit is None or len(batch) < limit) and not queue.empty():
        batch.append(queue.get_nowait())
    return batch


OUTCOMES = ("sent", "already_sent", "retried", "parked")


def _outcome(verdict: Verdict) -> str:
    if isinstance(verdict, Retry):
        return "retried"
    if isinstance(verdict, Park):
        return "parked"
    return "sent" if verdict.reason == "sent" else "already_sent"


def _with_headers(properties: BasicProperties, extra: dict[str, Any]) -> pika.BasicProperties:
    return pika.BasicProperties(
        content_type=properties.content_type or "application/json",
        delivery_mode=pika.DeliveryMode.Persistent,
        message_id=properties.message_id,
        type=properties.type,
        headers={**(properties.headers or {}), **extra},
    )


def install_signal_handlers(consumer: Consumer) -> None:
    on_stop_signals(consumer.request_stop, left_behind="the broker requeues unacked jobs")
