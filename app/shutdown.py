"""Two-step shutdown, for every gevent process (web, consumers, relay).

The first SIGTERM or SIGINT starts a graceful stop: stop taking work, finish what is in flight.
A second one exits at once with status 1: whoever sent it has stopped waiting (the broker
requeues what a consumer had not acknowledged; the outbox relay publishes what a request left).
"""

from __future__ import annotations

import logging
import os
import signal
from collections.abc import Callable

import gevent

log = logging.getLogger(__name__)

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def on_stop_signals(graceful: Callable[[], None], *, left_behind: str = "") -> None:
    """Call `graceful` on the first stop signal, exit at once on the second. `graceful` runs in
    the hub, so it must not block: set a flag, or spawn the drain. `left_behind` says in the
    log what becomes of the unfinished work when the second signal cuts it short."""
    requested = False

    def handle() -> None:
        nonlocal requested
        if requested:
            suffix = f"; {left_behind}" if left_behind else ""
            log.warning("second stop signal: exiting now%s", suffix)
            os._exit(1)
        requested = True
        graceful()

    for signum in STOP_SIGNALS:
        gevent.signal_handler(signum, handle)
