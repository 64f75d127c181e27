"""A consumer's batching: when a claim waits for company (group commit), and how few frames
ack a batch.

At a light load, deliveries come one at a time and the wait would be all of a delivery's delay
(the paced delivery-lag probe: 21 ms to the sinks with a 10 ms wait, 8 without). Deliveries that
come together mean a load at which waiting gathers more into one transaction.
"""

from __future__ import annotations

import gevent
import gevent.event
import pika

import services.consumer as consumer_module
from services.consumer import LINGER_SECONDS, Consumer, Delivery
from services.handlers import Ack, RetryPolicy


class AckingHandler:
    def __init__(self) -> None:
        self.claimed: list[int] = []

    def claim(self, bodies):
        self.claimed.append(len(bodies))
        return [Ack("already sent") for _ in bodies]


def consumer_with(handler: AckingHandler) -> Consumer:
    """A consumer that never connects: its loops are driven by hand."""
    return Consumer(
        channel="email",
        amqp_url="amqp://guest:guest@127.0.0.1:1/%2F",
        sessions=None,  # type: ignore[arg-type]
        policy=RetryPolicy(max_attempts=3, delays_ms=(100,)),
        concurrency=10,
        prefetch=20,
        handler=handler,  # type: ignore[arg-type]
    )


def untimed_takes(monkeypatch) -> list[float]:
    """Make the consumer's takes never wait; return the list of the lingers they were given."""
    lingers: list[float] = []
    real_take = consumer_module._take_batch

    def take(queue, *, linger, limit):
        lingers.append(linger)
        return real_take(queue, linger=0, limit=limit)  # the waits themselves are not timed

    monkeypatch.setattr(consumer_module, "_take_batch", take)
    return lingers


def run_claims(monkeypatch, arrivals: list[int]) -> tuple[list[float], list[int]]:
    """Feed the claim loop `arrivals` (deliveries put at once, one group per take) while
    another send is in flight; return the linger each take was given, and the claims made."""
    lingers = untimed_takes(monkeypatch)
    handler = AckingHandler()
    consumer = consumer_with(handler)
    consumer._in_flight = 1  # a send of an earlier delivery is still running
    loop = gevent.spawn(consumer._claim_loop)
    tag = 0
    for size in arrivals:
        for _ in range(size):
            tag += 1
            consumer._work.put(Delivery(0, tag, b"{}", pika.BasicProperties()))
        while sum(handler.claimed) < tag:
            gevent.sleep(0)
    loop.kill()
    return lingers[: len(arrivals)], handler.claimed


def test_a_lone_delivery_is_claimed_at_once_even_with_sends_in_flight(monkeypatch):
    lingers, claimed = run_claims(monkeypatch, [1, 1, 1])
    assert claimed == [1, 1, 1]
    assert lingers == [0, 0, 0]


def test_deliveries_that_come_together_make_the_next_claim_wait_for_company(monkeypatch):
    lingers, claimed = run_claims(monkeypatch, [3, 2, 1, 1])
    assert claimed == [3, 2, 1, 1]
    assert lingers == [0, LINGER_SECONDS, LINGER_SECONDS, 0]


class CountingChannel:
    def __init__(self) -> None:
        self.acks: list[tuple[int, bool]] = []

    def basic_ack(self, delivery_tag: int, multiple: bool = False) -> None:
        self.acks.append((delivery_tag, multiple))


def test_deliveries_older_than_every_unsettled_one_are_acked_with_one_frame():
    consumer = consumer_with(AckingHandler())
    channel = CountingChannel()
    consumer._consume_channel = channel  # type: ignore[assignment]
    consumer._unsettled = set(range(1, 9))
    # 4 and 7 are still being sent: 1, 2 and 3 go in one frame, 5 and 8 one each.
    consumer._ack([1, 2, 3, 5, 8])
    assert channel.acks == [(3, True), (5, False), (8, False)]
    assert consumer._unsettled == {4, 6, 7}
    # Nothing older left unsettled: one frame.
    consumer._ack([4, 6, 7])
    assert channel.acks[-1:] == [(7, True)]
    assert consumer._unsettled == set()


class SlowRecordingHandler:
    """Claims every job, sends at once, and records only when `recorded` is set."""

    def __init__(self) -> None:
        self.sent = 0
        self.recorded = gevent.event.Event()

    def claim(self, bodies):
        return ["claimed"] * len(bodies)

    def send(self, claim):
        self.sent += 1
        return "sent"

    def record(self, results):
        self.recorded.wait()
        return [Ack("sent") for _ in results]


def test_sends_the_ledger_has_not_recorded_keep_their_slots(monkeypatch):
    # A message the server accepted and the ledger has not recorded goes out again if the
    # consumer dies: however fast the sends, there are never more of them than the slots.
    untimed_takes(monkeypatch)
    handler = SlowRecordingHandler()
    consumer = consumer_with(handler)  # type: ignore[arg-type]
    for tag in range(1, 3 * consumer.concurrency + 1):
        consumer._work.put(Delivery(0, tag, b"{}", pika.BasicProperties()))
    loops = [gevent.spawn(consumer._claim_loop), gevent.spawn(consumer._record_loop)]
    try:
        _run_until(lambda: handler.sent >= consumer.concurrency)
        gevent.sleep(0.02)  # room for any send past the slots to start
        assert handler.sent == consumer.concurrency  # the rest wait for the record
        handler.recorded.set()
        _run_until(lambda: handler.sent == 3 * consumer.concurrency)
    finally:
        gevent.killall(loops)


def _run_until(condition, turns: int = 1000) -> None:
    for _ in range(turns):
        if condition():
            return
        gevent.sleep(0.001)
    raise AssertionError("the loops did not get there")


class RecordingHandler:
    def __init__(self) -> None:
        self.records = 0

    def record(self, results):
        self.records += 1
        return [Ack("sent") for _ in results]


def test_a_record_lingers_for_company_unless_every_slot_waits_for_it(monkeypatch):
    # The record gives the sends' slots back. While some are free it waits a moment for the
    # sends finishing alongside (one transaction for several); with every one taken, the claims
    # are waiting for it, and the wait would hold each new send back as long: a consumer with
    # 10 sends of 50 ms drained 150 jobs a second that way, 180 without.
    lingers = untimed_takes(monkeypatch)
    handler = RecordingHandler()
    consumer = consumer_with(handler)  # type: ignore[arg-type]
    loop = gevent.spawn(consumer._record_loop)

    def finish_a_send(*, slots_taken: int, others_sending: int) -> None:
        for _ in range(slots_taken):  # the finished send's, and the others'
            consumer._send_slots.acquire()
        consumer._sending = others_sending
        consumer._results.put((Delivery(0, 1, b"{}", pika.BasicProperties()), "sent"))
        records = handler.records
        _run_until(lambda: handler.records == records + 1)
        for _ in range(slots_taken - 1):  # the others end too
            consumer._send_slots.release()

    try:
        finish_a_send(slots_taken=4, others_sending=3)
        finish_a_send(slots_taken=consumer.concurrency, others_sending=consumer.concurrency - 1)
        finish_a_send(slots_taken=1, others_sending=0)
        assert lingers == [consumer_module.RECORD_LINGER_SECONDS, 0, 0]
        assert consumer._send_slots.counter == consumer.concurrency  # each record gave its back
    finally:
        loop.kill()
