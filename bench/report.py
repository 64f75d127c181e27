"""The terminal report: the table, the textbook beside it, the extras, and the targets."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from bench.aggregate import SERVERS, find_point, server_sweeps


def _ms(value: float | None, width: int = 7) -> str:
    if value is None:
        return f"{'-':>{width}}"
    if value < 10:
        return f"{value:>{width}.2f}"
    return f"{value:>{width}.1f}"


def _num(value: float | None, width: int = 7, digits: int = 0) -> str:
    return f"{'-':>{width}}" if value is None else f"{value:>{width}.{digits}f}"


def _ratio(value: float | None) -> str:
    return "    -" if value is None else f"{value:5.1f}x"


def latency_table(
    points: Sequence[dict[str, Any]],
    textbook: dict[str, dict[str, float]],
    *,
    show_textbook_at: int | None,
) -> list[str]:
    lines = [
        "                       latency (ms)                                hub     textbook     "
        "delivery lag (ms)   queue",
        "   c  mode           p50      p95      p99    req/s  errors  stalls      ms  req/s    "
        "p50      p99       peak",
    ]
    level = None
    for point in points:
        if level is not None and point["concurrency"] != level:
            lines.append("")
        level = point["concurrency"]
        latency = point["latency_ms"]
        book = textbook.get(point["mode"]) if point["concurrency"] == show_textbook_at else None
        row = (
            f"{point['concurrency']:>4}  {point['mode']:<11} {_ms(latency['p50'], 8)} "
            f"{_ms(latency['p95'], 8)} {_ms(latency['p99'], 8)} {_num(point['rps'], 8)} "
            f"{point['errors']:>7} {_num(point.get('hub_stalls'), 7)} "
            f"{_num(book['ms'] if book else None, 7)} {_num(book['rps'] if book else None, 6)}"
        )
        delivery = point.get("delivery_ms")
        if delivery:
            both = delivery["both"]
            peak = point.get("queue_depth_peak") or {}
            row += (
                f" {_ms(both['p50'], 7)}  {_ms(both['p99'], 7)}  "
                f"{peak.get('email', 0):>5}/{peak.get('sms', 0)}"
            )
            if delivery.get("undelivered"):
                row += f"  ({delivery['undelivered']} undelivered)"
            if point.get("outbox_fallbacks"):
                row += f"  ({point['outbox_fallbacks']} left to the relay)"
        lines.append(row.rstrip())
    return lines


CPU_PARTS = ("web", "consumers", "relay", "sinks", "rabbitmq", "loadgen", "bench")


CPU_TITLE = "CPU per request (ms, from /proc; warm-up and, for queued, the drain included)"
CPU_LOAD_TITLE = (
    "c={level}: CPU per request while the load lasted (ms, from /proc; warm-up included, the "
    "drain after it not)"
)


def cpu_table(
    points: Sequence[dict[str, Any]], *, key: str = "cpu", title: str = CPU_TITLE
) -> list[str]:
    rows = [p for p in points if p.get(key)]
    if not rows:
        return []
    lines = [
        "",
        title,
        "   c  mode         "
        + "".join(f"{part:>10}" for part in CPU_PARTS)
        + "   machine busy  other programs  irq+steal",
    ]
    for point in rows:
        figures = point[key]["ms_per_request"]
        busy = point[key]["machine_busy"]
        others = point[key]["others_cores"]
        kernel = point[key].get("kernel_cores")
        lines.append(
            f"{point['concurrency']:>4}  {point['mode']:<11} "
            + "".join(_ms(figures.get(part), 10) for part in CPU_PARTS)
            + f"   {'-' if busy is None else f'{busy:.0%}':>12}"
            + f"  {'-' if others is None else f'{others:.2f} CPUs':>14}"
            + f"  {'-' if kernel is None else f'{kernel:.2f} CPUs':>9}"
        )
    return lines


def web_threads_table(points: Sequence[dict[str, Any]]) -> list[str]:
    rows = [p for p in points if p.get("web_threads")]
    if not rows:
        return []
    lines = [
        "",
        "the web's serving threads during the load (Linux schedstat): share of the time on a CPU,",
        "runnable but waiting for a CPU, and asleep (for the clients, the database's write lock)",
        "   c  mode           on CPU   waiting    asleep",
    ]
    for point in rows:
        shares = point["web_threads"]
        lines.append(
            f"{point['concurrency']:>4}  {point['mode']:<11} "
            + "".join(f"{shares[key]:>10.0%}" for key in ("running", "waiting", "asleep"))
        )
    return lines


def diagnostics(results: dict[str, Any]) -> list[str]:
    lines: list[str] = []
    probe = results.get("lag_probe")
    if probe and probe.get("delivery_ms"):
        delivery = probe["delivery_ms"]
        lines += [
            "",
            f"delivery lag, queued at one client paced at {probe['rate']:g} req/s (parallel mode's "
            "rate; the consumers are not behind):",
            f"  email p50 {_ms(delivery['email']['p50'], 0)} ms, sms p50 "
            f"{_ms(delivery['sms']['p50'], 0)} ms, "
            f"both p50 {_ms(delivery['both']['p50'], 0)} / p99 "
            f"{_ms(delivery['both']['p99'], 0)} ms to receipt (request p50 "
            f"{_ms(probe['latency_ms']['p50'], 0)} ms, {probe['requests']} requests)",
        ]
    lines += paced_baselines(results)
    paused = results.get("consumers_paused") or []
    if paused:
        lines += [
            "",
            "queued with the consumers stopped (SIGTERM before the slice, restarted and drained "
            "after): the request path alone",
        ]
        for point in paused:
            insert = find_point(results["points"], "insert-only", point["concurrency"])
            queued = find_point(results["points"], "queued", point["concurrency"])
            lines.append(
                f"  c={point['concurrency']:<4} p50 {_ms(point['latency_ms']['p50'], 0)} ms, "
                f"{_num(point['rps'], 0)} req/s   (consumers running: "
                f"{_ms(queued['latency_ms']['p50'] if queued else None, 0)} ms, "
                f"{_num(queued['rps'] if queued else None, 0)} req/s; insert-only "
                f"{_ms(insert['latency_ms']['p50'] if insert else None, 0)} ms, "
                f"{_num(insert['rps'] if insert else None, 0)} req/s)"
            )
            shares = point.get("web_threads")
            if shares:
                lines.append(
                    f"         the web's threads: {shares['running']:.0%} on a CPU, "
                    f"{shares['waiting']:.0%} waiting for one, {shares['asleep']:.0%} asleep"
                )
    return lines


def paced_baselines(results: dict[str, Any]) -> list[str]:
    paced = results.get("paced_baselines") or []
    if not paced:
        return []
    lines = [
        "",
        f"one client paced at {paced[0]['rate']:g} req/s (parallel mode's rate): each request "
        "comes after the machine idled, as each parallel",
        "request's does after its sends; in the sweep these run back to back, their code warm",
    ]
    for point in paced:
        swept = find_point(results["points"], point["mode"], 1)
        line = (
            f"  {point['mode']:<12} p50 {_ms(point['latency_ms']['p50'], 0)} ms (back to back "
            f"{_ms(swept['latency_ms']['p50'] if swept else None, 0)} ms)"
        )
        db = point["server_ms"].get("db")
        if db is not None:
            swept_db = swept["server_ms"].get("db") if swept else None
            line += f"; its transaction {_ms(db, 0)} ms (back to back {_ms(swept_db, 0)} ms)"
        lines.append(line)
    return lines


def ratio_table(rows: Sequence[dict[str, Any]], book: dict[str, dict[str, float]]) -> list[str]:
    lines = [
        "",
        "ratios                         p50 latency            req/s, queued over the other",
        "                             measured  textbook        measured  textbook",
    ]
    for row in rows:
        for mode in ("serial", "parallel"):
            latency_book = book[mode]["ms"] / book["queued"]["ms"]
            rps_book = book["queued"]["rps"] / book[mode]["rps"]
            lines.append(
                f"  c={row['concurrency']:<4} {mode + ' / queued':<18} "
                f"{_ratio(row[f'{mode}_over_queued'])}     {latency_book:4.1f}x         "
                f"{_ratio(row[f'queued_rps_over_{mode}'])}     {rps_book:4.1f}x"
            )
    return lines


def peer_table(peer: dict[str, Any], how: str) -> list[str]:
    lines = [
        "",
        f"Celery peer, sink {peer['sink_delay_ms']:g} ms ({how}): {peer['jobs_per_side']} "
        f"welcome emails each, concurrency {peer['concurrency']}, prefetch {peer['prefetch']} "
        f"(rounds {' '.join(peer['order'])})",
        "                                   publish p50    p99    drain jobs/s",
    ]
    for side, label in (
        ("offload", "Offload (outbox; confirm later)"),
        ("celery", "Celery delay() (confirm_publish)"),
    ):
        figures = peer[side]
        lines.append(
            f"  {label:<32} {_ms(figures['publish_ms']['p50'], 8)} "
            f"{_ms(figures['publish_ms']['p99'], 7)}  {_num(figures['drain_jobs_per_s'], 10)}"
        )
    waited = peer["offload"].get("publish_confirmed_ms")
    if waited:
        lines.append(
            f"  {'Offload, waiting for the confirm':<32} {_ms(waited['p50'], 8)} "
            f"{_ms(waited['p99'], 7)}  (the broker's round trip; shown, not a target)"
        )
    return lines


def render(results: dict[str, Any], targets: Sequence[dict[str, Any]]) -> str:
    meta = results["meta"]
    host = meta["host"]
    points = results["points"]
    levels = sorted({p["concurrency"] for p in points})
    low = 1 if 1 in levels else (levels[0] if levels else None)
    out = [
        f"Offload benchmark  {meta['started_at']}  ({meta['elapsed_s']:.0f}s)  "
        f"{host['cpus']} CPUs, Python {host['python']}, SQLite {host['sqlite']}",
        f"command: {meta['command']}",
        f"sinks {meta['sink_delay_ms']:g} ms each; consumers {meta['consumer_concurrency']} sends "
        f"at once per channel (ceiling ~{meta['consumer_send_ceiling_per_s']:.0f}/s); "
        f"server TCP_NODELAY {'on' if meta['tcp_nodelay'] else 'OFF'}; "
        f"{meta['options']['rounds']} rounds x {meta['options']['duration']:g}s per point",
        "",
    ]
    stalls = meta.get("hub_block_ms")
    for n, sweep in enumerate(server_sweeps(results)):
        label = sweep.get("label") or SERVERS.get(sweep["server"], sweep["server"])
        workers = f", {sweep['workers']} workers" if sweep.get("workers", 1) > 1 else ""
        out += (
            [f"== web: {label}{workers} ==", ""]
            if n == 0
            else ["", f"== web: {label}{workers} ==", ""]
        )
        out += latency_table(sweep["points"], results["textbook"], show_textbook_at=low)
        out += ratio_table(sweep["ratios"], results["textbook"])
        out += cpu_table(sweep["points"])
        # At the highest level the two tables differ most: queued mode's jobs wait out the load
        # in the broker, and what bounds its rate is what each part spent while it lasted.
        high = max((p["concurrency"] for p in sweep["points"]), default=0)
        out += cpu_table(
            [p for p in sweep["points"] if p["concurrency"] == high],
            key="cpu_load",
            title=CPU_LOAD_TITLE.format(level=high),
        )
        out += web_threads_table(sweep["points"])
    out += [
        "",
        "  noop = GET /noop (the ceiling of server + load generator); insert-only = the same "
        "registration with no notification.",
        "  delivery lag = request start until the later of the email and the SMS reached its "
        "sink (add the sink's own delay for acceptance).",
        f"  hub stalls = times the web's event loop was held over {stalls:g} ms during the point "
        "(warm-up and drain included; one log line each from gevent's monitor thread)."
        if stalls
        else "  hub stalls: not counted (--hub-block-ms 0).",
    ]
    server = [
        (p["mode"], p["concurrency"], p["server_ms"])
        for p in points
        if p["server_ms"] and p["concurrency"] == low
    ]
    if server:
        out += ["", f"server-side steps at c={low} (p50 from Server-Timing, ms)"]
        for mode, _level, steps in server:
            parts = "  ".join(f"{step} {_ms(value, 0).strip()}" for step, value in steps.items())
            out.append(f"  {mode:<11} {parts}")

    out += diagnostics(results)

    nagle = results.get("nagle") or []
    if nagle:
        out += [
            "",
            "without TCP_NODELAY on the server (c=1): Nagle's algorithm meets the client's "
            "delayed ACK",
            "  mode          p50 with   p50 without   difference",
        ]
        for point in nagle:
            with_it = find_point(points, point["mode"], 1)
            a = with_it["latency_ms"]["p50"] if with_it else None
            b = point["latency_ms"]["p50"]
            diff = None if a is None or b is None else b - a
            out.append(
                f"  {point['mode']:<11} {_ms(a, 9)}   {_ms(b, 11)}   "
                f"{'-' if diff is None else f'{diff:+.1f} ms':>10}"
            )

    burst = results.get("burst")
    if burst:
        out += [
            "",
            f"burst (peak shaving): {burst['requests']} queued registrations at "
            f"concurrency {burst['concurrency']}, consumers x{burst['consumer_concurrency']} "
            f"at {burst['sink_delay_ms']:g} ms",
        ]
        out.append(
            f"  accepted {burst['accepted']} in {burst['accept_seconds']:.1f}s "
            f"({_num(burst['accept_rate_per_s'], 0)} req/s, "
            f"p50 {_ms(burst['latency_ms']['p50'], 0)} ms, "
            f"p99 {_ms(burst['latency_ms']['p99'], 0)} ms), {burst['errors']} errors"
        )
        if burst.get("left_to_relay"):
            out.append(
                f"  {burst['left_to_relay']} of their jobs were published by the outbox relay "
                "(the request's publish or its confirm failed)"
            )
        for channel, figures in burst["channels"].items():
            out.append(
                f"  {channel:<5} peak queue {figures['queue_depth_peak']:>5}, delivered "
                f"{figures['delivered']} at {_num(figures['rate_per_s'], 0)}/s, last "
                f"{figures['last_s'] or 0:.1f}s after the start "
                f"({figures['drained_after_last_accept_s'] or 0:+.1f}s after the last accept)"
            )

    peer = results.get("peer")
    if peer:
        out += peer_table(peer, "consumer running while the jobs are published")
        if peer.get("zero_delay"):
            out += peer_table(
                peer["zero_delay"],
                "pure overhead: jobs published with the consumer stopped, then drained",
            )
    if results.get("dispatch"):
        from bench.dispatch import report_lines

        out += report_lines(results["dispatch"])

    if targets:
        out += ["", "targets"]
        for target in targets:
            out.append(f"  {target['status']:<4}  {target['title']}")
            out.append(f"        {target['measured']}")
    return "\n".join(out)
