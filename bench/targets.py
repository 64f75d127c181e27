"""The issue's targets, each judged from one run's results as PASS, MISS or N/A (not measured).

Ratios and differences within one run on one machine, never absolute wall-clock limits: the
machine's speed cancels out, the design's costs do not.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from bench.aggregate import find_point

PASS, MISS, NOT_MEASURED = "PASS", "MISS", "N/A"


def _target(key: str, title: str, ok: bool | None, measured: str) -> dict[str, Any]:
    status = NOT_MEASURED if ok is None else PASS if ok else MISS
    return {"key": key, "title": title, "status": status, "measured": measured}


def _p50(
    points: Sequence[dict[str, Any]], mode: str, level: int, nodelay: bool | None = None
) -> float | None:
    point = find_point(points, mode, level, nodelay)
    if point is None:
        return None
    value: float | None = point["latency_ms"]["p50"]
    return value


def _rps(points: Sequence[dict[str, Any]], mode: str, level: int) -> float | None:
    point = find_point(points, mode, level)
    return None if point is None else point["rps"]


def evaluate(results: dict[str, Any]) -> list[dict[str, Any]]:
    points = results["points"]
    delay = float(results["meta"]["sink_delay_ms"])
    levels = sorted({p["concurrency"] for p in points})
    low = 1 if 1 in levels else (levels[0] if levels else 1)
    high = 50 if 50 in levels else (levels[-1] if levels else 50)
    insert = _p50(points, "insert-only", low)
    serial = _p50(points, "serial", low)
    parallel = _p50(points, "parallel", low)
    queued = _p50(points, "queued", low)
    targets = []

    title = f"c={low}: serial p50 within 10% of email + SMS delay + insert-only p50"
    if serial is not None and insert is not None:
        expected = 2 * delay + insert
        off = (serial - expected) / expected
        targets.append(
            _target(
                "serial",
                title,
                abs(off) <= 0.10,
                f"{serial:.1f} ms vs {delay:g} + {delay:g} + {insert:.2f} = "
                f"{expected:.1f} ms ({off:+.1%})",
            )
        )
    else:
        targets.append(_target("serial", title, None, "not measured"))

    title = f"c={low}: parallel p50 within 10% of max(email, SMS delay) + insert-only p50"
    if parallel is not None and insert is not None:
        expected = delay + insert
        off = (parallel - expected) / expected
        targets.append(
            _target(
                "parallel",
                title,
                abs(off) <= 0.10,
                f"{parallel:.1f} ms vs {delay:g} + {insert:.2f} = {expected:.1f} ms ({off:+.1%})",
            )
        )
    else:
        targets.append(_target("parallel", title, None, "not measured"))

    paused = results.get("consumers_paused") or []

    def paused_note(level: int, what: str) -> str:
        point = find_point(paused, "queued", level)
        if point is None:
            return ""
        if what == "p50":
            value = point["latency_ms"]["p50"]
            text = None if value is None else f"{value:.2f} ms"
        else:
            value = point["rps"]
            text = None if value is None else f"{value:.0f} req/s"
        return f"; with the consumers paused: {text}" if text else ""

    title = f"c={low}: queued p50 at most 1.5 ms above insert-only p50 (publisher confirms on)"
    if queued is not None and insert is not None:
        point = find_point(points, "queued", low)
        publish = point["server_ms"].get("publish") if point else None
        detail = f" (publish step p50 {publish:.2f} ms)" if publish is not None else ""
        targets.append(
            _target(
                "queued",
                title,
                queued - insert <= 1.5,
                f"{queued:.2f} ms vs {insert:.2f} + 1.5 = {insert + 1.5:.2f} ms: "
                f"{queued - insert:+.2f} ms{detail}{paused_note(low, 'p50')}",
            )
        )
    else:
        targets.append(_target("queued", title, None, "not measured"))

    title = f"c={high}: queued req/s at least 0.8 x insert-only req/s"
    queued_rps, insert_rps = _rps(points, "queued", high), _rps(points, "insert-only", high)
    if queued_rps and insert_rps:
        targets.append(
            _target(
                "throughput",
                title,
                queued_rps >= 0.8 * insert_rps,
                f"{queued_rps:.0f} vs 0.8 x {insert_rps:.0f} = "
                f"{0.8 * insert_rps:.0f} req/s ({queued_rps / insert_rps:.2f}x)"
                f"{paused_note(high, 'rps')}",
            )
        )
    else:
        targets.append(_target("throughput", title, None, "not measured"))

    title = (
        f"c={low}: queued delivery lag p50 (both messages accepted by the sinks) at most "
        f"10 ms above parallel p50"
    )
    # The paced probe when there is one: the same arrival rate as parallel mode, so the
    # consumers are not behind. Without it, the closed-loop c=1 figure (a harder test).
    probe = results.get("lag_probe")
    point = probe or find_point(points, "queued", low)
    lag = point["delivery_ms"]["both"]["p50"] if point and point["delivery_ms"] else None
    if lag is not None and parallel is not None:
        accepted = lag + delay
        how = f"paced at {probe['rate']:g}/s" if probe else "closed loop"
        targets.append(
            _target(
                "delivery",
                title,
                accepted <= parallel + 10,
                f"{lag:.1f} ms to receipt + {delay:g} ms sink = {accepted:.1f} ms ({how}) "
                f"vs {parallel:.1f} + 10 = {parallel + 10:.1f} ms",
            )
        )
    else:
        targets.append(_target("delivery", title, None, "not measured"))

    peer = results.get("peer")
    title = "Offload's email consumer drains at least as fast as a Celery gevent worker"
    if peer:
        mine, theirs = peer["offload"]["drain_jobs_per_s"], peer["celery"]["drain_jobs_per_s"]
        targets.append(
            _target(
                "peer-drain",
                title,
                mine >= theirs,
                f"{mine:.0f} vs {theirs:.0f} jobs/s ({mine / theirs:.2f}x) at "
                f"concurrency {peer['concurrency']}",
            )
        )
    else:
        targets.append(_target("peer-drain", title, None, "not measured"))

    title = "Offload's publish p50 no slower than Celery delay() with confirm_publish"
    if peer:
        mine, theirs = peer["offload"]["publish_ms"]["p50"], peer["celery"]["publish_ms"]["p50"]
        targets.append(
            _target("peer-publish", title, mine <= theirs, f"{mine:.2f} vs {theirs:.2f} ms per job")
        )
    else:
        targets.append(_target("peer-publish", title, None, "not measured"))

    title = (
        "the server avoids the delayed-ACK stall (noop c=1 p50 under 20 ms with TCP_NODELAY), "
        "and the bench shows it without (over 30 ms)"
    )
    # With --no-nodelay the sweep itself ran without it, and there is no separate section.
    every = [*points, *(results.get("nagle") or [])]
    with_it = _p50(every, "noop", 1, nodelay=True)
    without = _p50(every, "noop", 1, nodelay=False)
    if with_it is not None and without is not None:
        targets.append(
            _target(
                "nodelay",
                title,
                with_it < 20 and without > 30,
                f"{with_it:.2f} ms with, {without:.1f} ms without",
            )
        )
    else:
        targets.append(_target("nodelay", title, None, "not measured"))
    return targets
