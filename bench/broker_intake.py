"""What a queued registration's event costs RabbitMQ, in each classic queue layout.

    python -m bench.broker_intake [--messages 20000] [--rounds 3]

Starts a RabbitMQ node of its own (Debian's package, as `make run` does). In each round, for
each layout, in a fresh vhost: the two work queues are declared as an earlier version of
Offload declared them (version 1 before a3877b9; version 2 in RabbitMQ's default mode after it)
or left to the topology (version 2, lazy), and Offload's topology is declared over them (it
keeps them as they are); then `user.registered` events are published as a queued registration
publishes its one (`PikaPublisher.publish_events` with `on_confirmed`, at most WINDOW
unconfirmed, no consumer: under load the consumers wait, and the queues grow), and afterwards
both work queues are drained by one plain consumer. The broker's CPU, from /proc, is divided by
the number of events for each phase: the intake (what the broker does while the load lasts) and
the delivery (two deliveries and acks a registration, when the load has eased). The layouts
take turns, in one order and then the other, so the machine's drift hits them alike.

This is the measurement behind `CLASSIC_QUEUE_VERSION` and `CLASSIC_QUEUE_MODE` in
`app/topology.py`; see docs/performance-history.md, "Since 8ed5d7a" and "Since 0dff3e4".
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import gevent
import pika

from app.events import USER_REGISTERED, EventMessage, encode_event, user_event
from app.jobs import CHANNELS, PARKED_EXCHANGE, work_queue
from app.messaging import PikaPublisher
from bench import cpu
from devstack.broker_node import RabbitNode, rabbitmq_installed
from devstack.ports import free_port

WINDOW = 60  # unconfirmed events at most, about what the web has in flight at 50 clients
RETRY_DELAYS_MS = (1_000,)  # the retry queues play no part here


@dataclass(frozen=True)
class Layout:
    """How the work queues were declared, and what the broker must report them running as."""

    name: str
    # The arguments an earlier version of Offload declared its work queues with, beyond the
    # dead-lettering (None: the topology's own declaration, as Offload declares them now).
    declared_as: dict[str, Any] | None
    version: int
    mode: str


LAYOUTS = (
    Layout("version 1", {}, 1, "default"),  # before a3877b9
    Layout("version 2", {"x-queue-version": 2}, 2, "default"),  # from a3877b9
    Layout("version 2, lazy", None, 2, "lazy"),  # the topology now
)
CURRENT = LAYOUTS[-1]


@dataclass
class LayoutCost:
    """The broker's CPU, ms per event, one figure per round."""

    intake: list[float] = field(default_factory=list)
    delivery: list[float] = field(default_factory=list)


def progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def declare_work_queues_as_before(url: str, arguments: dict[str, Any]) -> None:
    """The work queues as an earlier version of Offload declared them."""
    connection = pika.BlockingConnection(pika.URLParameters(url))
    try:
        channel = connection.channel()
        for name in CHANNELS:
            channel.queue_declare(
                work_queue(name),
                durable=True,
                arguments={
                    "x-queue-type": "classic",
                    **arguments,
                    "x-dead-letter-exchange": PARKED_EXCHANGE,
                    "x-dead-letter-routing-key": name,
                },
            )
    finally:
        connection.close()


def publish_events(url: str, count: int) -> None:
    """`count` events, as queued registrations publish them, with WINDOW in flight at most."""
    publisher = PikaPublisher(url, retry_delays_ms=RETRY_DELAYS_MS, name="offload-bench")
    confirmed = 0

    def one_confirmed() -> None:
        nonlocal confirmed
        confirmed += 1

    def publish_all() -> None:
        publisher.check(timeout=10)  # connected, topology declared: not part of the figure
        occurred_at = datetime.now(UTC)
        for sent in range(count):
            while sent - confirmed >= WINDOW:
                gevent.sleep(0.0005)
            row = user_event(USER_REGISTERED, f"bench-user-{sent}", occurred_at)
            event = EventMessage(row["id"], USER_REGISTERED, encode_event(row["body"]))
            publisher.publish_events([event], timeout=10, on_confirmed=one_confirmed)
        while confirmed < count:
            gevent.sleep(0.001)

    try:
        gevent.spawn(publish_all).get(timeout=max(60.0, count / 100))
    finally:
        publisher.close()


def drain(url: str, count: int) -> None:
    """Take `count` messages off each work queue, acking twenty at a time."""
    connection = pika.BlockingConnection(pika.URLParameters(url))
    try:
        channel = connection.channel()
        channel.basic_qos(prefetch_count=200)
        received = 0
        expected = count * len(CHANNELS)

        def on_message(ch: object, method: pika.spec.Basic.Deliver, *_: object) -> None:
            nonlocal received
            received += 1
            if received % 20 == 0 or received == expected:
                channel.basic_ack(method.delivery_tag, multiple=True)

        for name in CHANNELS:
            channel.basic_consume(work_queue(name), on_message)
        deadline = time.monotonic() + max(60.0, count / 100)
        while received < expected:
            if time.monotonic() > deadline:
                raise RuntimeError(f"drained {received} of {expected} messages")
            connection.process_data_events(time_limit=0.1)
    finally:
        connection.close()


def broker_ms_per_event(node_pid: int, count: int, work: Callable[[], None]) -> float:
    before = cpu.sample({"rabbitmq": [node_pid]})
    work()
    spent = cpu.difference(before, cpu.sample({"rabbitmq": [node_pid]}))
    if spent is None:
        raise RuntimeError("no /proc: the broker's CPU cannot be read here")
    return spent.seconds["rabbitmq"] * 1000 / count


def measure(node: RabbitNode, layout: Layout, count: int, round_: int) -> tuple[float, float]:
    node_pid = node.pid()
    if node_pid is None:
        raise RuntimeError("the node wrote no PID file")
    vhost = f"intake-{LAYOUTS.index(layout)}-{round_}"
    with node.vhost(vhost) as url:
        if layout.declared_as is not None:
            declare_work_queues_as_before(url, layout.declared_as)
        publish_events(url, 100)  # declares the topology and warms the path up
        drain(url, 100)
        running = {node.queue_layout(vhost, work_queue(name)) for name in CHANNELS}
        if running != {(layout.version, layout.mode)}:
            raise RuntimeError(f"asked for {layout.name}, the work queues run as {running}")
        intake = broker_ms_per_event(node_pid, count, lambda: publish_events(url, count))
        delivery = broker_ms_per_event(node_pid, count, lambda: drain(url, count))
    return intake, delivery


def run(messages: int, rounds: int, base_dir: str) -> dict[str, LayoutCost]:
    node = RabbitNode(base_dir, free_port())
    progress(f"starting RabbitMQ node {node.nodename}")
    node.start()
    costs = {layout.name: LayoutCost() for layout in LAYOUTS}
    try:
        for round_ in range(1, rounds + 1):
            for layout in LAYOUTS if round_ % 2 else tuple(reversed(LAYOUTS)):
                intake, delivery = measure(node, layout, messages, round_)
                costs[layout.name].intake.append(intake)
                costs[layout.name].delivery.append(delivery)
                progress(
                    f"round {round_}/{rounds}, {layout.name}: {messages} events, broker "
                    f"{intake:.3f} ms each to take in, {delivery:.3f} to deliver to both queues"
                )
    finally:
        node.stop()
    return costs


def format_report(costs: dict[str, LayoutCost], messages: int) -> str:
    width = max(len(name) for name in costs) + 2
    lines = [
        f"RabbitMQ's CPU per queued registration's event ({messages} a round; ms, each round, "
        "then the median)",
        f"{'layout':<{width}}{'intake (while the load lasts)':<36} delivery and acks (both queues)",
    ]
    for name, cost in costs.items():
        intake = " ".join(f"{v:.3f}" for v in cost.intake)
        delivery = " ".join(f"{v:.3f}" for v in cost.delivery)
        lines.append(
            f"{name:<{width}}"
            f"{intake + f'  ({statistics.median(cost.intake):.3f})':<36} "
            f"{delivery}  ({statistics.median(cost.delivery):.3f})"
        )
    current = statistics.median(costs[CURRENT.name].intake)
    for name, cost in costs.items():
        if name == CURRENT.name:
            continue
        change = current / statistics.median(cost.intake) - 1
        lines.append(
            f"{CURRENT.name} takes an event in for {abs(change):.0%} "
            f"{'more' if change > 0 else 'less'} of the broker's CPU than {name}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=20_000, help="events a round and layout")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    if args.messages < 1 or args.rounds < 1:
        parser.error("--messages and --rounds must be at least 1")
    if not rabbitmq_installed():
        print("RabbitMQ is not installed (make rabbitmq installs it)", file=sys.stderr)
        return 1
    if not cpu.available():
        print("no /proc: the broker's CPU cannot be read here", file=sys.stderr)
        return 1
    # The earlier layouts are declared the old way on purpose: the topology's warnings about
    # them, and pika's about the refused declarations before them, are expected here.
    logging.basicConfig(level=logging.ERROR)
    with tempfile.TemporaryDirectory(prefix="offload-intake-") as base_dir:
        costs = run(args.messages, args.rounds, base_dir)
    print(format_report(costs, args.messages))
    return 0


if __name__ == "__main__":
    sys.exit(main())
