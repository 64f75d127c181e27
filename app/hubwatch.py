"""Keeping the event loop responsive: no full garbage collection over the start-up heap, and
event-loop stalls counted with gevent's monitor thread.

One process serves every request on one thread, so a greenlet that runs for 30 ms without
yielding (a long computation, a C call that blocks, SQLite's own busy wait) makes every other
request wait 30 ms. gevent's monitor thread notices when the hub has not run for longer than
`max_blocking_time`; each time it does, `offload_hub_blocks_total` goes up and a warning names
the greenlet. The benchmark turns this on to show the loop never stalls under load; the tracing
it needs costs a little CPU on every greenlet switch, so it is off by default.
"""

from __future__ import annotations

import gc
import logging
import warnings

import gevent
from gevent import events

from app.metrics import HUB_BLOCKS

log = logging.getLogger(__name__)


def watch_hub(threshold_ms: float) -> None:
    """Count every stall of the event loop longer than `threshold_ms` (0: do nothing)."""
    if threshold_ms <= 0:
        return
    gevent.config.monitor_thread = True
    gevent.config.max_blocking_time = threshold_ms / 1000
    gevent.config.print_blocking_reports = False  # one log line instead of every stack
    events.subscribers.append(_count_block)
    with warnings.catch_warnings():
        # The thread would also watch memory if psutil were installed, and warns when it is
        # not; no memory limit is set (max_memory_usage), so there is nothing to miss.
        warnings.filterwarnings("ignore", "Unable to monitor memory usage", category=RuntimeWarning)
        gevent.get_hub().start_periodic_monitoring_thread()


def _count_block(event: object) -> None:
    if isinstance(event, events.EventLoopBlocked):
        HUB_BLOCKS.inc()
        log.warning(
            "the event loop was held for over %.0f ms by %s, at %s",
            event.blocking_time * 1000,
            event.greenlet,
            _innermost_frames(event.info),
        )


def _innermost_frames(report: list[str], count: int = 3) -> str:
    """The last few frames of the blocked stack, innermost first. A stall with none of this
    process's own frames on top is usually the process waiting for a CPU, not its code."""
    frames = [
        line.strip().replace('File "', "").replace('", line ', ":")
        for chunk in report
        for line in str(chunk).splitlines()
        if line.strip().startswith('File "')
    ]
    return " <- ".join(reversed(frames[-count:])) or "an unknown place"


def freeze_startup_heap() -> None:
    """Leave the objects made at start-up (Flask, SQLAlchemy, pika, the modules: some 85,000 of
    them) out of every later garbage collection.

    CPython's full collection walks every tracked object, and with that heap it took 50 ms here:
    one every few thousand requests, during which no other request moves. After `gc.freeze()`
    the collector only looks at what was made since. Call it once, after the app is built and
    before serving (after the fork, in a gunicorn worker).
    """
    gc.collect()
    gc.freeze()
