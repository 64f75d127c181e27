"""The issue's targets, each judged from one run's results as PASS, MISS or N/A (not measured).

Ratios and differences within one run on one machine, never absolute wall-clock limits: the
machine's speed cancels out, the design's costs do not. (The CPU targets are in ms of CPU per
registration, which a faster machine lowers for every part alike; they are read at the highest
concurrency level, where the per-request overheads of an idle server no longer count.)

The targets read from a sweep are judged for every server shape of the run (`python wsgi.py`,
then the Procfile's gunicorn line, whose keys end in `@gunicorn`); those of the extras (the
lag probe, the Nagle comparison, the Celery peer) once.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from bench.aggregate import find_point, server_sweeps

PASS, MISS, NOT_MEASURED = "PASS", "MISS", "N/A"

WEB_CPU_INSERT_MS = 1.5  # web CPU per insert-only registration
WEB_CPU_QUEUED_EXTRA_MS = 0.6  # ... and what queueing may add to it
CONSUMER_CPU_MS = 2.0  # both consumers, per queued registration (its two jobs)
QUEUED_OVER_SERIAL_RPS = 2.0  # at the highest level
QUEUED_OVER_INSERT_RPS = 0.8  # at the highest level
QUEUED_EXTRA_P50_MS = 1.5  # at c=1, over insert-only
PEER_DRAIN_FACTOR = 2.0  # at 0 ms: Offload's consumer drains at least this x Celery's
PEER_PUBLISH_FACTOR = 0.5  # at 0 ms: Offload's publish p50 at most this x Celery's


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


def _by_round(points: Sequence[dict[str, Any]], over: str, under: str, level: int) -> str:
    """Each round's ratio of two modes' req/s at `level`, to show beside the pooled one.

    A round runs a level's modes back to back, so its two slices are seconds apart where the
    rounds are most of a minute apart: how far the rounds disagree shows how much of a ratio
    the machine moved while it was measured."""
    top, bottom = find_point(points, over, level), find_point(points, under, level)
    pairs = zip((top or {}).get("rounds") or [], (bottom or {}).get("rounds") or [], strict=False)
    ratios = [a["rps"] / b["rps"] for a, b in pairs if a.get("rps") and b.get("rps")]
    return f"; by round {', '.join(f'{r:.2f}x' for r in ratios)}" if len(ratios) > 1 else ""


def _levels(points: Sequence[dict[str, Any]]) -> tuple[list[int], int, int]:
    levels = sorted({p["concurrency"] for p in points})
    low = 1 if 1 in levels else (levels[0] if levels else 1)
    high = 50 if 50 in levels else (levels[-1] if levels else 50)
    return levels, low, high


def _cpu(points: Sequence[dict[str, Any]], mode: str, level: int, part: str) -> float | None:
    point = find_point(points, mode, level)
    if point is None or not point.get("cpu"):
        return None
    value: float | None = point["cpu"]["ms_per_request"].get(part)
    return value


def evaluate(results: dict[str, Any]) -> list[dict[str, Any]]:
    sweeps = server_sweeps(results)
    targets = extras_targets(results)
    targets += sweep_targets(results, sweeps[0]["points"], suffix="", prefix="")
    for sweep in sweeps[1:]:
        targets += sweep_targets(
            results,
            sweep["points"],
            suffix=f"@{sweep['server']}",
            prefix=f"[{sweep['server']} x{sweep['workers']}] ",
        )
    targets += peer_targets(results)
    return targets


def extras_targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    """What `python wsgi.py`'s sweep and its extras show about the textbook's own claims."""
    points = results["points"]
    delay = float(results["meta"]["sink_delay_ms"])
    _all, low, _high = _levels(points)
    insert = _p50(points, "insert-only", low)
    serial = _p50(points, "serial", low)
    parallel = _p50(points, "parallel", low)
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
        measured = f"{parallel:.1f} ms vs {delay:g} + {insert:.2f} = {expected:.1f} ms ({off:+.1%})"
        # Shown, not judged: the baseline paced as parallel's requests come (bench/parts.py).
        paced = _p50(results.get("paced_baselines") or [], "insert-only", 1)
        if paced is not None:
            paced_off = (parallel - delay - paced) / (delay + paced)
            measured += (
                f"; insert-only paced at parallel's rate {paced:.2f} ms: {delay:g} + "
                f"{paced:.2f} = {delay + paced:.1f} ms ({paced_off:+.1%})"
            )
        targets.append(_target("parallel", title, abs(off) <= 0.10, measured))
    else:
        targets.append(_target("parallel", title, None, "not measured"))

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


def sweep_targets(
    results: dict[str, Any], points: Sequence[dict[str, Any]], *, suffix: str, prefix: str
) -> list[dict[str, Any]]:
    """The issue's targets on one server shape's sweep (keys end in `suffix`)."""
    levels, low, high = _levels(points)
    first = not suffix  # the consumers-paused slices ran on the first server only
    targets = []

    def add(key: str, title: str, ok: bool | None, measured: str) -> None:
        targets.append(_target(key + suffix, prefix + title, ok, measured))

    paused = results.get("consumers_paused") or []

    def paused_note(level: int, what: str) -> str:
        point = find_point(paused, "queued", level) if first else None
        if point is None:
            return ""
        if what == "p50":
            value = point["latency_ms"]["p50"]
            text = None if value is None else f"{value:.2f} ms"
        else:
            value = point["rps"]
            text = None if value is None else f"{value:.0f} req/s"
        return f"; with the consumers paused: {text}" if text else ""

    def paced_note() -> str:
        # Shown, not judged: both at one client paced at parallel's rate (bench/parts.py), so
        # the consumers keep up and neither runs back to back.
        probe = results.get("lag_probe") if first else None
        insert = _p50(results.get("paced_baselines") or [], "insert-only", 1)
        queued = probe["latency_ms"]["p50"] if probe else None
        if queued is None or insert is None:
            return ""
        return (
            f"; paced at parallel's rate: {queued:.2f} ms vs insert-only {insert:.2f} ms "
            f"({queued - insert:+.2f} ms)"
        )

    # -- CPU, from /proc, at the highest level --------------------------------------------------
    insert_cpu = _cpu(points, "insert-only", high, "web")
    queued_cpu = _cpu(points, "queued", high, "web")
    noop_cpu = _cpu(points, "noop", high, "web")
    title = f"c={high}: web CPU per insert-only registration at most {WEB_CPU_INSERT_MS:g} ms"
    if insert_cpu is not None:
        floor = f" (noop {noop_cpu:.2f} ms)" if noop_cpu is not None else ""
        add(
            "web-cpu-insert",
            title,
            insert_cpu <= WEB_CPU_INSERT_MS,
            f"{insert_cpu:.2f} ms vs {WEB_CPU_INSERT_MS:g} ms{floor}",
        )
    else:
        add("web-cpu-insert", title, None, "not measured (no /proc?)")

    title = (
        f"c={high}: web CPU per queued registration at most insert-only + "
        f"{WEB_CPU_QUEUED_EXTRA_MS:g} ms"
    )
    if queued_cpu is not None and insert_cpu is not None:
        limit = insert_cpu + WEB_CPU_QUEUED_EXTRA_MS
        add(
            "web-cpu-queued",
            title,
            queued_cpu <= limit,
            f"{queued_cpu:.2f} ms vs {insert_cpu:.2f} + {WEB_CPU_QUEUED_EXTRA_MS:g} = "
            f"{limit:.2f} ms ({queued_cpu - insert_cpu:+.2f} ms)",
        )
    else:
        add("web-cpu-queued", title, None, "not measured (no /proc?)")

    consumers = _cpu(points, "queued", high, "consumers")
    title = (
        f"c={high}: consumers' CPU per queued registration (email + SMS job, drained and "
        f"recorded) at most {CONSUMER_CPU_MS:g} ms"
    )
    if consumers is not None:
        add(
            "consumer-cpu",
            title,
            consumers <= CONSUMER_CPU_MS,
            f"{consumers:.2f} ms vs {CONSUMER_CPU_MS:g} ms ({consumers / 2:.2f} ms a job)",
        )
    else:
        add("consumer-cpu", title, None, "not measured (no /proc?)")

    # -- the order of the three modes, at every level --------------------------------------
    for key, what, better in (("order-p50", "p50", "lower"), ("order-rps", "req/s", "higher")):
        title = f"every level ({', '.join(f'c={n}' for n in levels)}): queued {what} " + (
            "< parallel < serial" if better == "lower" else "> parallel > serial"
        )
        parts: list[str] = []
        verdicts: list[bool | None] = []
        for level in levels:
            get = _p50 if key == "order-p50" else _rps
            q, pa, se = (get(points, mode, level) for mode in ("queued", "parallel", "serial"))
            if q is None or pa is None or se is None:
                verdicts.append(None)
                parts.append(f"c={level}: not measured")
                continue
            ok = q < pa < se if better == "lower" else q > pa > se
            verdicts.append(ok)
            fmt = "{:.1f}" if key == "order-p50" else "{:.0f}"
            sign = "<" if better == "lower" else ">"
            parts.append(
                f"c={level}: {fmt.format(q)} {sign} {fmt.format(pa)} {sign} {fmt.format(se)}"
                + ("" if ok else " MISS")
            )
        measured = "; ".join(parts) + (" (queued, parallel, serial)" if parts else "")
        ok_all = None if not verdicts or None in verdicts else all(verdicts)
        add(key, title, ok_all, measured or "not measured")

    # -- throughput at the highest level -------------------------------------------------------
    queued_rps = _rps(points, "queued", high)
    serial_rps = _rps(points, "serial", high)
    insert_rps = _rps(points, "insert-only", high)
    title = f"c={high}: queued req/s at least {QUEUED_OVER_SERIAL_RPS:g} x serial req/s"
    if queued_rps and serial_rps:
        add(
            "queued-vs-serial",
            title,
            queued_rps >= QUEUED_OVER_SERIAL_RPS * serial_rps,
            f"{queued_rps:.0f} vs {QUEUED_OVER_SERIAL_RPS:g} x {serial_rps:.0f} = "
            f"{QUEUED_OVER_SERIAL_RPS * serial_rps:.0f} req/s ({queued_rps / serial_rps:.2f}x"
            f"{_by_round(points, 'queued', 'serial', high)})",
        )
    else:
        add("queued-vs-serial", title, None, "not measured")

    title = f"c={high}: queued req/s at least {QUEUED_OVER_INSERT_RPS:g} x insert-only req/s"
    if queued_rps and insert_rps:
        add(
            "throughput",
            title,
            queued_rps >= QUEUED_OVER_INSERT_RPS * insert_rps,
            f"{queued_rps:.0f} vs {QUEUED_OVER_INSERT_RPS:g} x {insert_rps:.0f} = "
            f"{QUEUED_OVER_INSERT_RPS * insert_rps:.0f} req/s ({queued_rps / insert_rps:.2f}x"
            f"{_by_round(points, 'queued', 'insert-only', high)}){paused_note(high, 'rps')}",
        )
    else:
        add("throughput", title, None, "not measured")

    # -- queued at one client --------------------------------------------------------------
    insert = _p50(points, "insert-only", low)
    queued = _p50(points, "queued", low)
    title = (
        f"c={low}: queued p50 at most {QUEUED_EXTRA_P50_MS:g} ms above insert-only p50 "
        "(publisher confirms on)"
    )
    if queued is not None and insert is not None:
        point = find_point(points, "queued", low)
        publish = point["server_ms"].get("publish") if point else None
        detail = f" (publish step p50 {publish:.2f} ms)" if publish is not None else ""
        add(
            "queued",
            title,
            queued - insert <= QUEUED_EXTRA_P50_MS,
            f"{queued:.2f} ms vs {insert:.2f} + {QUEUED_EXTRA_P50_MS:g} = "
            f"{insert + QUEUED_EXTRA_P50_MS:.2f} ms: {queued - insert:+.2f} ms"
            f"{detail}{paused_note(low, 'p50')}{paced_note()}",
        )
    else:
        add("queued", title, None, "not measured")

    # -- the event loop --------------------------------------------------------------------
    threshold = results["meta"].get("hub_block_ms")
    point = find_point(points, "queued", high)
    stalls = point.get("hub_stalls") if point else None
    title = f"c={high} queued: the web's event loop never held over {threshold or 20:g} ms"
    if stalls is not None and threshold:
        worst = max(
            (p for p in points if p.get("hub_stalls") is not None),
            key=lambda p: p["hub_stalls"],
            default=None,
        )
        elsewhere = (
            f"; most in any point: {worst['hub_stalls']} ({worst['mode']} c={worst['concurrency']})"
            if worst and worst["hub_stalls"]
            else "; none in any point"
        )
        add(
            "stalls",
            title,
            stalls == 0,
            f"{stalls} stall{'s' if stalls != 1 else ''} over {threshold:g} ms{elsewhere}",
        )
    else:
        add("stalls", title, None, "not counted (HUB_BLOCK_REPORT_MS off: --hub-block-ms 0)")
    return targets


def peer_targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Offload's consumer and publisher against Celery's, at the sink's delay and at 0 ms."""
    peer = results.get("peer")
    targets = []
    title = "Offload's email consumer drains at least as fast as a Celery gevent worker"
    if peer:
        mine, theirs = peer["offload"]["drain_jobs_per_s"], peer["celery"]["drain_jobs_per_s"]
        targets.append(
            _target(
                "peer-drain",
                title,
                mine >= theirs,
                f"{mine:.0f} vs {theirs:.0f} jobs/s ({mine / theirs:.2f}x) at "
                f"concurrency {peer['concurrency']}, sink {peer['sink_delay_ms']:g} ms",
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

    zero = (peer or {}).get("zero_delay")
    title = (
        f"sink at 0 ms: Offload's email consumer drains a backlog at least "
        f"{PEER_DRAIN_FACTOR:g} x as fast as a Celery gevent worker"
    )
    mine = zero and zero["offload"]["drain_jobs_per_s"]
    theirs = zero and zero["celery"]["drain_jobs_per_s"]
    if mine and theirs:
        targets.append(
            _target(
                "peer-drain-0ms",
                title,
                mine >= PEER_DRAIN_FACTOR * theirs,
                f"{mine:.0f} vs {PEER_DRAIN_FACTOR:g} x {theirs:.0f} = "
                f"{PEER_DRAIN_FACTOR * theirs:.0f} jobs/s ({mine / theirs:.2f}x)",
            )
        )
    else:
        targets.append(_target("peer-drain-0ms", title, None, "not measured"))

    title = (
        f"sink at 0 ms: Offload's publish p50 at most {PEER_PUBLISH_FACTOR:g} x Celery delay() "
        "with confirm_publish (each as its caller pays it: Offload's outbox lets it not wait)"
    )
    mine = zero and zero["offload"]["publish_ms"]["p50"]
    theirs = zero and zero["celery"]["publish_ms"]["p50"]
    if mine and theirs:
        targets.append(
            _target(
                "peer-publish-0ms",
                title,
                mine <= PEER_PUBLISH_FACTOR * theirs,
                f"{mine:.2f} vs {PEER_PUBLISH_FACTOR:g} x {theirs:.2f} = "
                f"{PEER_PUBLISH_FACTOR * theirs:.2f} ms per job ({mine / theirs:.2f}x)",
            )
        )
    else:
        targets.append(_target("peer-publish-0ms", title, None, "not measured"))
    return targets
