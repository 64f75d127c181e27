"""Queue depth over time: a thread of the bench parent polls the work queues every 100 ms.

A passive `queue_declare` returns the number of messages ready in the queue (not those already
delivered to a consumer and awaiting its ack: up to the prefetch count per consumer).
"""

from __future__ import annotations

import contextlib
import threading
import time
from dataclasses import dataclass, field

import pika
import pika.exceptions

from app.jobs import CHANNELS, work_queue
from app.topology import connection_parameters

POLL_SECONDS = 0.1
MAX_SAMPLES = 200_000  # a bound on memory: ~5.5 hours at 10 samples a second


@dataclass
class DepthSamples:
    t: list[float] = field(default_factory=list)  # time.time()
    depth: dict[str, list[int]] = field(default_factory=lambda: {c: [] for c in CHANNELS})

    def between(self, since: float, until: float) -> DepthSamples:
        window = DepthSamples()
        for i, at in enumerate(self.t):
            if since <= at <= until:
                window.t.append(at)
                for channel in CHANNELS:
                    window.depth[channel].append(self.depth[channel][i])
        return window

    def peak(self) -> dict[str, int]:
        return {channel: max(values, default=0) for channel, values in self.depth.items()}


class QueueDepthPoller:
    def __init__(self, amqp_url: str, interval: float = POLL_SECONDS) -> None:
        self.params = connection_parameters(amqp_url, name="offload-bench-depth")
        self.interval = interval
        self.samples = DepthSamples()
        self.errors = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="queue-depth", daemon=True)
        self._latest: dict[str, int] = {}

    def start(self) -> QueueDepthPoller:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def latest(self) -> dict[str, int]:
        with self._lock:
            return dict(self._latest)

    def snapshot(self) -> DepthSamples:
        with self._lock:
            copy = DepthSamples(list(self.samples.t))
            copy.depth = {c: list(v) for c, v in self.samples.depth.items()}
            return copy

    def _run(self) -> None:
        connection: pika.BlockingConnection | None = None
        while not self._stop.is_set():
            try:
                if connection is None or not connection.is_open:
                    connection = pika.BlockingConnection(self.params)
                    channel = connection.channel()
                depths = {
                    name: channel.queue_declare(work_queue(name), passive=True).method.message_count
                    for name in CHANNELS
                }
            except (pika.exceptions.AMQPError, OSError):
                # The queues may not be declared yet (no publisher connected), or the node is
                # going away at the end of the run: try again on the next tick.
                self.errors += 1
                connection = None
                self._stop.wait(self.interval * 5)
                continue
            with self._lock:
                self._latest = depths
                if len(self.samples.t) < MAX_SAMPLES:
                    self.samples.t.append(time.time())
                    for name in CHANNELS:
                        self.samples.depth[name].append(depths[name])
            self._stop.wait(self.interval)
        if connection is not None and connection.is_open:
            with contextlib.suppress(pika.exceptions.AMQPError, OSError):
                connection.close()
