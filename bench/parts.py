"""The measured parts of a run, each on the running session: the sweep, the lag probe, the
baselines paced at parallel mode's rate, queued mode with the consumers paused, and the web
server without TCP_NODELAY. (The burst and the Celery peer are parts too, in bench/burst.py
and bench/peer.py.)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from app.config import BASELINE_MODE
from bench.aggregate import Slice, aggregate
from bench.protocol import NOOP
from bench.stats import summarize

if TYPE_CHECKING:
    from bench.runner import BenchOptions, BenchSession


def rotated(modes: Sequence[str], by: int) -> list[str]:
    shift = by % len(modes)
    return [*modes[shift:], *modes[:shift]]


def run_sweep(session: BenchSession) -> list[Slice]:
    options = session.options
    per_round = options.duration / options.rounds
    total = options.rounds * len(options.concurrency) * len(options.modes)
    slices: list[Slice] = []
    for round_number in range(options.rounds):
        for concurrency in options.concurrency:
            for mode in rotated(options.modes, round_number):
                piece = session.run_slice(mode, concurrency, per_round)
                slices.append(piece)
                session.progress(
                    f"[{len(slices):>3}/{total} {session.elapsed()}] round {round_number + 1}"
                    f"/{options.rounds} {describe_slice(piece)}"
                )
    return slices


def paced_rate(options: BenchOptions, parallel_rps: float | None) -> float:
    """The one-client pace of the paced parts: `--lag-rate`, else what parallel mode reached."""
    return options.lag_rate or parallel_rps or 10.0


def run_lag_probe(session: BenchSession, parallel_rps: float | None) -> dict[str, Any] | None:
    """Queued mode at one client, paced at the rate parallel mode managed: the delivery lag
    when the consumers are not behind, for a fair comparison with parallel mode's answer."""
    options = session.options
    if options.diagnostics_duration <= 0:
        return None
    rate = paced_rate(options, parallel_rps)
    piece = session.run_slice("queued", 1, options.diagnostics_duration, rate=rate)
    session.progress(
        f"[lag probe {session.elapsed()}] paced at {rate:.1f}/s {describe_slice(piece)}"
    )
    point = aggregate([piece])[0]
    point["rate"] = round(rate, 2)
    return point


def run_paced_baselines(session: BenchSession, parallel_rps: float | None) -> list[dict[str, Any]]:
    """noop and insert-only at one client, paced at the rate parallel mode managed.

    The sweep's baselines run back to back, so each request finds the code it runs still warm
    and the processes awake. Each parallel request comes after its sends left the machine idle
    for the sinks' delay: its code runs cold, and every process it wakes has to be woken. These
    are the baselines under the same pace, so the report can say how much of parallel's time
    over the textbook is that rather than the sends (the c=1 parallel target keeps its bound
    from the back-to-back figure).
    """
    options = session.options
    if options.diagnostics_duration <= 0:
        return []
    rate = paced_rate(options, parallel_rps)
    slices = []
    for mode in (NOOP, BASELINE_MODE):
        if mode not in options.modes:
            continue
        piece = session.run_slice(mode, 1, options.diagnostics_duration, rate=rate)
        slices.append(piece)
        session.progress(
            f"[paced baseline {session.elapsed()}] paced at {rate:.1f}/s {describe_slice(piece)}"
        )
    points = aggregate(slices)
    for point in points:
        point["rate"] = round(rate, 2)
    return points


def run_with_consumers_paused(session: BenchSession) -> list[dict[str, Any]]:
    """Queued mode with the consumers stopped while the load runs, then restarted and drained.

    What the request path of queued mode costs on its own, as when the consumers run on other
    machines; on one small machine they otherwise take their CPU from the web server. They are
    stopped cleanly (SIGTERM), not frozen with SIGSTOP: a consumer frozen inside a SQLite write
    transaction would hold the database's one write lock and stall every registration.
    """
    options = session.options
    if options.diagnostics_duration <= 0:
        return []
    levels = sorted({min(options.concurrency), max(options.concurrency)})
    consumers = [n for n in ("email", "sms") if n in session.stack.processes]
    slices = []
    for level in levels:
        # Idle first: what the last part left still reaches the queues (the relay publishes
        # released events), and a message that lands there once the consumers stopped would wait
        # for them, and run_slice's own wait for empty queues with it, to its bound.
        session.wait_idle()
        for name in consumers:
            session.stack.stop_process(name)
        try:
            piece = session.run_slice("queued", level, options.diagnostics_duration, deliver=False)
        finally:
            for name in consumers:
                session.stack.start_worker(name)
        session.measure_delivery(piece)  # only to drain before what follows; the lag is void
        piece.lag_ms = {}
        slices.append(piece)
        session.progress(f"[consumers paused {session.elapsed()}] {describe_slice(piece)}")
    points = aggregate(slices)
    for point in points:
        point["consumers"] = "paused"
        point["delivery_ms"] = None
    return points


def run_without_nodelay(session: BenchSession) -> list[Slice]:
    options = session.options
    if not options.nodelay or options.nagle_duration <= 0:
        return []
    session.progress("restarting the web server without TCP_NODELAY")
    session.restart_web(nodelay=False)
    slices: list[Slice] = []
    try:
        for mode in options.modes:
            piece = session.run_slice(mode, 1, options.nagle_duration)
            slices.append(piece)
            session.progress(f"[nagle {session.elapsed()}] {describe_slice(piece)}")
    finally:
        session.restart_web(nodelay=True)
    return slices


def describe_slice(piece: Slice) -> str:
    latency = summarize([piece.result.latency_ms[i] for i in piece.ok])
    rps = len(piece.ok) / piece.duration_s if piece.duration_s > 0 else math.nan
    text = (
        f"c={piece.concurrency:<3} {piece.mode:<11} p50 {latency['p50']:7.1f} ms  "
        f"p99 {latency['p99']:7.1f} ms  {rps:7.1f} req/s  {piece.errors} err"
    )
    if piece.lag_ms:
        lag = summarize(piece.lag_ms["both"])
        text += f"  lag p50 {lag['p50']:.0f} ms"
        if piece.undelivered:
            text += f"  ({piece.undelivered} undelivered)"
        if piece.fallbacks:
            text += f"  ({piece.fallbacks} left to the relay)"
    return text
