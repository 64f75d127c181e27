"""From slices to results: the pure arithmetic of a run, with no processes and no clock.

`aggregate` pools the rounds' slices of each mode and level into one point; `report`, `charts`
and `targets` read those points back with `find_point`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from bench.cpu import CpuSample
from bench.protocol import NOOP, LoadResult
from bench.stats import finite_or_none, summarize

MODES: tuple[str, ...] = (NOOP, "insert-only", "serial", "parallel", "queued")
# The web shapes a sweep can run on: what `make run` and the tests use, and the Procfile's line.
SERVERS: dict[str, str] = {
    "wsgi": "python wsgi.py (gevent WSGIServer, one process)",
    "gunicorn": "gunicorn --config gunicorn.conf.py wsgi:app (the Procfile's web line)",
}


@dataclass
class Slice:
    """One mode at one concurrency level for one round: what the load generator saw, and more."""

    mode: str
    concurrency: int
    tcp_nodelay: bool
    result: LoadResult
    measured: list[int]  # positions in result of the requests in the measured window
    ok: list[int]  # ... of those, the ones answered with the expected status
    # queued mode: per measured ok request, ms from its start until each sink received it
    lag_ms: dict[str, list[float]] = field(default_factory=dict)
    undelivered: int = 0
    depth_peak: dict[str, int] = field(default_factory=dict)
    # CPU seconds per part of the stack over the whole slice (warm-up, and for queued mode the
    # drain, included), and how many requests that covers; None where /proc is missing.
    cpu: CpuSample | None = None
    # ... over the load alone (warm-up and measured window; no drain): what each part spent
    # while the requests came, which is what bounds how many come (queued mode's jobs mostly
    # wait in the broker until after it)
    cpu_load: CpuSample | None = None
    server: str = "wsgi"  # the web's shape, a key of SERVERS
    # the web's serving threads over the load (warm-up and measured window): seconds on a CPU,
    # seconds waiting for one, and the thread-seconds spanned (cpu.sched_difference)
    web_sched: dict[str, float] | None = None
    # event-loop stalls the web logged over the slice (warm-up and drain included); None: the
    # run did not count them (--hub-block-ms 0)
    stalls: int | None = None

    # queued mode: notifications the outbox relay published during the slice (their publish
    # or its confirm failed), counted in the database once the slice's jobs were recorded
    relayed: int = 0

    @property
    def fallbacks(self) -> int:
        return self.relayed

    @property
    def duration_s(self) -> float:
        return self.result.measure_until - self.result.measure_from

    @property
    def errors(self) -> int:
        return len(self.measured) - len(self.ok)


def _figures(summary: dict[str, float], keys: Sequence[str]) -> dict[str, float | None]:
    return {key: finite_or_none(summary[key]) for key in keys}


def aggregate(slices: Sequence[Slice]) -> list[dict[str, Any]]:
    """One point per (mode, concurrency, tcp_nodelay, server): the rounds' slices pooled."""
    groups: dict[tuple[str, int, bool, str], list[Slice]] = {}
    for piece in slices:
        key = (piece.mode, piece.concurrency, piece.tcp_nodelay, piece.server)
        groups.setdefault(key, []).append(piece)
    points = []
    for (mode, concurrency, nodelay, web), pieces in groups.items():
        latencies = [p.result.latency_ms[i] for p in pieces for i in p.ok]
        duration = sum(p.duration_s for p in pieces)
        error_kinds: dict[str, int] = {}
        for p in pieces:
            for kind, count in p.result.error_kinds.items():
                error_kinds[kind] = error_kinds.get(kind, 0) + count
        server: dict[str, float | None] = {}
        for step in ("db", "publish", "email", "sms"):
            values = [
                value
                for p in pieces
                for i in p.ok
                if (value := p.result.steps.get(step, [None] * len(p.result.start))[i]) is not None
            ]
            if values:
                server[step] = finite_or_none(summarize(values)["p50"])
        point: dict[str, Any] = {
            "mode": mode,
            "concurrency": concurrency,
            "tcp_nodelay": nodelay,
            "server": web,
            "requests": len(latencies),
            "errors": sum(p.errors for p in pieces),
            "error_kinds": error_kinds,
            "duration_s": round(duration, 3),
            "rps": finite_or_none(len(latencies) / duration) if duration > 0 else None,
            "latency_ms": _figures(summarize(latencies), ("p50", "p95", "p99", "mean", "max")),
            "server_ms": server,
            "rounds": [
                {
                    "rps": finite_or_none(len(p.ok) / p.duration_s) if p.duration_s else None,
                    "p50": finite_or_none(summarize([p.result.latency_ms[i] for i in p.ok])["p50"]),
                }
                for p in pieces
            ],
            "delivery_ms": None,
            "queue_depth_peak": None,
            "outbox_fallbacks": sum(p.fallbacks for p in pieces),
            "cpu": cpu_per_request(pieces),
            "cpu_load": cpu_per_request(pieces, load_only=True),
            "web_threads": web_thread_shares(pieces),
            "hub_stalls": None
            if any(p.stalls is None for p in pieces)
            else sum(p.stalls or 0 for p in pieces),
        }
        if mode == "queued":
            point["delivery_ms"] = {
                channel: {
                    "n": len(values := [v for p in pieces for v in p.lag_ms.get(channel, [])]),
                    **_figures(summarize(values), ("p50", "p95", "p99", "max")),
                }
                for channel in ("email", "sms", "both")
            }
            point["delivery_ms"]["undelivered"] = sum(p.undelivered for p in pieces)
            point["queue_depth_peak"] = {
                channel: max((p.depth_peak.get(channel, 0) for p in pieces), default=0)
                for channel in ("email", "sms")
            }
        points.append(point)
    order = {mode: n for n, mode in enumerate(MODES)}
    points.sort(key=lambda p: (not p["tcp_nodelay"], p["concurrency"], order.get(p["mode"], 99)))
    return points


def cpu_per_request(pieces: Sequence[Slice], *, load_only: bool = False) -> dict[str, Any] | None:
    """ms of CPU per request for each part, and how busy the machine was, over the slices
    (with `load_only`, over their load alone)."""
    taken = [(p, p.cpu_load if load_only else p.cpu) for p in pieces]
    samples = [sample for _p, sample in taken if sample is not None]
    requests = sum(len(p.result.start) for p, sample in taken if sample is not None)
    if not samples or not requests:
        return None
    parts = {part for s in samples for part in s.seconds}
    seconds = {part: sum(s.seconds.get(part, 0.0) for s in samples) for part in sorted(parts)}
    processes = sum(s.machine_processes for s in samples)
    kernel = sum(s.machine_kernel for s in samples)
    total = sum(s.machine_total for s in samples)
    wall = total / (os.cpu_count() or 1)  # seconds of wall-clock time the samples cover
    if not total or not wall:
        return None
    return {
        "ms_per_request": {part: round(1000 * v / requests, 3) for part, v in seconds.items()},
        "machine_busy": round((processes + kernel) / total, 3),
        # CPUs' worth of time in interrupts (mostly loopback networking) and steal
        "kernel_cores": round(kernel / wall, 2),
        # CPUs' worth of work by processes that are not part of this run (other programs)
        "others_cores": round(max(processes - sum(seconds.values()), 0.0) / wall, 2),
    }


def web_thread_shares(pieces: Sequence[Slice]) -> dict[str, float] | None:
    """Shares of the load's time the web's serving threads ran, waited for a core, and slept,
    over the slices."""
    samples = [p.web_sched for p in pieces if p.web_sched is not None]
    span = sum(s["span"] for s in samples)
    if not span:
        return None
    running = sum(s["running"] for s in samples) / span
    waiting = sum(s["waiting"] for s in samples) / span
    return {
        "running": round(running, 3),
        "waiting": round(waiting, 3),
        "asleep": round(max(1.0 - running - waiting, 0.0), 3),
    }


def find_point(
    points: Sequence[dict[str, Any]], mode: str, concurrency: int, nodelay: bool | None = None
) -> dict[str, Any] | None:
    """The point for `mode` at `concurrency` (and, if given, that TCP_NODELAY setting)."""
    for point in points:
        if (
            point["mode"] == mode
            and point["concurrency"] == concurrency
            and (nodelay is None or point["tcp_nodelay"] == nodelay)
        ):
            return point
    return None


def server_sweeps(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Every server shape's sweep of a run, the first (`points`) first.

    Each: server, label, workers, points, ratios. Results from before the gunicorn sweep have
    only `points`, taken to be `python wsgi.py`'s.
    """
    meta = results.get("meta") or {}
    first = {
        "server": meta.get("server", "wsgi"),
        "label": SERVERS.get(meta.get("server", "wsgi")),
        "workers": 1,
        "points": results["points"],
        "ratios": results.get("ratios") or [],
    }
    return [first, *(results.get("other_servers") or [])]


def ratios(points: Sequence[dict[str, Any]], levels: Sequence[int]) -> list[dict[str, Any]]:
    rows = []
    for level in levels:
        queued = find_point(points, "queued", level)
        row: dict[str, Any] = {"concurrency": level}
        for mode in ("serial", "parallel"):
            other = find_point(points, mode, level)
            q = queued and queued["latency_ms"]["p50"]
            o = other and other["latency_ms"]["p50"]
            row[f"{mode}_over_queued"] = o / q if o and q else None
            qr = queued and queued["rps"]
            orps = other and other["rps"]
            row[f"queued_rps_over_{mode}"] = qr / orps if qr and orps else None
        rows.append(row)
    return rows


def slice_windows(slices: Sequence[Slice], since: float) -> list[dict[str, Any]]:
    return [
        {
            "mode": p.mode,
            "concurrency": p.concurrency,
            "from": round(p.result.measure_from - since, 2),
            "until": round(p.result.measure_until - since, 2),
        }
        for p in slices
    ]
