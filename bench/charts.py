"""PNG charts from a run's results, drawn with matplotlib's Agg backend (no display needed)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
from matplotlib.figure import Figure

from bench.aggregate import MODES, find_point

DPI = 100
COLOURS = {
    "noop": "#9aa3b2",
    "insert-only": "#5b6475",
    "serial": "#b3261e",
    "parallel": "#d9822b",
    "queued": "#2454d6",
}
CHANNEL_COLOURS = {"email": "#1e7a3a", "sms": "#8e44ad"}


def save_chart(figure: Figure, out: Path, name: str, title: str, alt: str) -> dict[str, Any]:
    figure.tight_layout()
    path = out / name
    figure.savefig(path, dpi=DPI)
    width, height = figure.get_size_inches() * DPI
    plt.close(figure)
    return {"file": name, "title": title, "alt": alt, "width": int(width), "height": int(height)}


def latency_chart(results: dict[str, Any], out: Path) -> dict[str, Any]:
    points = results["points"]
    levels = sorted({p["concurrency"] for p in points})
    modes = [m for m in MODES if any(p["mode"] == m for p in points)]
    figure, axes = plt.subplots(2, len(levels), figsize=(3.4 * len(levels) + 1, 7), squeeze=False)
    for column, level in enumerate(levels):
        top, bottom = axes[0][column], axes[1][column]
        for x, mode in enumerate(modes):
            point = find_point(points, mode, level)
            if point is None or point["latency_ms"]["p50"] is None:
                continue
            p50, p99 = (
                point["latency_ms"]["p50"],
                point["latency_ms"]["p99"] or point["latency_ms"]["p50"],
            )
            book = results["textbook"].get(mode) if level == levels[0] else None
            top.bar(x, p50, color=COLOURS.get(mode, "#333"), width=0.7)
            top.plot([x, x], [p50, p99], color="#1d2330", linewidth=1.2)
            top.plot([x - 0.12, x + 0.12], [p99, p99], color="#1d2330", linewidth=1.2)
            # Above the whisker, so the figure never sits on the textbook's dashed line.
            top.annotate(
                f"{p50:.1f}" if p50 < 100 else f"{p50:.0f}",
                (x, max(p99, book["ms"] if book else 0)),
                textcoords="offset points",
                xytext=(0, 3),
                ha="center",
                fontsize=7,
            )
            if book:
                top.plot(
                    [x - 0.38, x + 0.38],
                    [book["ms"], book["ms"]],
                    color="#1d2330",
                    linestyle="--",
                    linewidth=1,
                )
            if point["rps"]:
                bottom.bar(x, point["rps"], color=COLOURS.get(mode, "#333"), width=0.7)
                bottom.annotate(
                    f"{point['rps']:.0f}",
                    (x, point["rps"]),
                    textcoords="offset points",
                    xytext=(0, 3),
                    ha="center",
                    fontsize=7,
                )
        top.set_yscale("log")
        top.margins(y=0.12)  # room for the figures above the tallest whisker
        top.set_title(f"concurrency {level}")
        bottom.set_yscale("log")
        bottom.margins(y=0.12)
        for axis in (top, bottom):
            axis.set_xticks(range(len(modes)))
            axis.set_xticklabels(modes, rotation=30, ha="right", fontsize=8)
            axis.grid(axis="y", alpha=0.3)
        if column == 0:
            top.set_ylabel("latency p50 (bar) to p99 (whisker), ms")
            bottom.set_ylabel("requests per second")
    figure.suptitle(
        "Registration latency and throughput by mode "
        f"(sinks {results['meta']['sink_delay_ms']:g} ms each; dashed: textbook)",
        fontsize=10,
    )
    return save_chart(
        figure,
        out,
        "latency.png",
        "Latency and throughput by mode and concurrency",
        "Bar charts of p50 latency with p99 whiskers, and requests per second, for each "
        "mode at each concurrency level, on log scales.",
    )


def burst_chart(burst: dict[str, Any], out: Path) -> dict[str, Any]:
    timeline = burst["timeline"]
    figure, (top, bottom) = plt.subplots(2, 1, figsize=(8, 6), sharex=True)
    accepted = timeline["accepted_s"]
    top.step(
        accepted,
        range(1, len(accepted) + 1),
        where="post",
        color=COLOURS["queued"],
        label="requests accepted (201)",
    )
    for channel in ("email", "sms"):
        times = timeline[f"{channel}_s"]
        top.step(
            times,
            range(1, len(times) + 1),
            where="post",
            color=CHANNEL_COLOURS[channel],
            label=f"{channel} delivered (sink received)",
        )
    ceiling = burst["consumer_concurrency"] / (burst["sink_delay_ms"] / 1000)
    first = min((t[0] for t in (timeline["email_s"], timeline["sms_s"]) if t), default=0.0)
    span = len(accepted) / ceiling
    top.plot(
        [first, first + span],
        [0, len(accepted)],
        color="#1d2330",
        linestyle=":",
        label=f"consumers' ceiling ({ceiling:.0f}/s per channel)",
    )
    top.set_ylabel("cumulative count")
    top.legend(fontsize=8, loc="lower right")
    top.grid(alpha=0.3)
    for channel in ("email", "sms"):
        bottom.plot(
            timeline["depth_s"],
            timeline[f"depth_{channel}"],
            color=CHANNEL_COLOURS[channel],
            label=f"offload.{channel} ready messages",
        )
    bottom.set_ylabel("queue depth")
    bottom.set_xlabel("seconds since the burst began")
    bottom.legend(fontsize=8)
    bottom.grid(alpha=0.3)
    title = (
        f"Burst: {burst['requests']} queued registrations at concurrency {burst['concurrency']}; "
        f"consumers x{burst['consumer_concurrency']} at {burst['sink_delay_ms']:g} ms"
    )
    if burst.get("left_to_relay"):
        title += (
            f"\n{burst['left_to_relay']} answered with their jobs left to the outbox relay "
            "(publish over its time budget)"
        )
    figure.suptitle(title, fontsize=10)
    return save_chart(
        figure,
        out,
        "burst.png",
        "Burst: the queue absorbs the spike",
        "Cumulative accepted requests rise fast; deliveries follow at the consumers' "
        "steady rate while the queue depth rises and drains back to zero.",
    )


def depth_chart(results: dict[str, Any], out: Path) -> dict[str, Any]:
    depth = results["queue_depth"]
    figure, axis = plt.subplots(figsize=(8, 3.2))
    for window in results.get("slices", []):
        if window["mode"] == "queued":
            axis.axvspan(window["from"], window["until"], color=COLOURS["queued"], alpha=0.12)
            axis.annotate(
                f"c={window['concurrency']}",
                (window["from"], 0),
                fontsize=6,
                xytext=(0, -10),
                textcoords="offset points",
            )
    for channel in ("email", "sms"):
        axis.plot(
            depth["t"],
            depth[channel],
            color=CHANNEL_COLOURS[channel],
            label=f"offload.{channel}",
            linewidth=1,
        )
    axis.set_xlabel("seconds since the sweep began (shaded: queued-mode slices)")
    axis.set_ylabel("ready messages")
    axis.legend(fontsize=8)
    axis.grid(alpha=0.3)
    figure.suptitle("Queue depth during the sweep", fontsize=10)
    return save_chart(
        figure,
        out,
        "queue_depth.png",
        "Queue depth during the sweep",
        "Ready messages in the email and SMS queues over the sweep; they rise during "
        "queued-mode slices above the consumers' rate and drain after.",
    )


def draw_all(results: dict[str, Any], out: Path) -> list[dict[str, Any]]:
    out.mkdir(parents=True, exist_ok=True)
    charts = [latency_chart(results, out)]
    if results.get("burst"):
        charts.append(burst_chart(results["burst"], out))
    if results.get("queue_depth", {}).get("t"):
        charts.append(depth_chart(results, out))
    if results.get("dispatch"):
        from bench.dispatch import draw

        charts += draw(results["dispatch"], out)
    return charts
