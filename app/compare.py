"""The latest benchmark results as a page: `GET /compare` and the charts it shows.

It only reads what `make bench` wrote to BENCH_RESULTS_DIR (results.json and PNG charts; a
relative path is taken from the working directory, as the bench's `--out` is); it never runs
anything. The bench package itself is not imported: the request path stays free of it.
"""

from __future__ import annotations

import json
import logging
import math
import re
from pathlib import Path
from typing import Any

from flask import Blueprint, abort, render_template, send_from_directory
from werkzeug.wrappers import Response

from app.bench_results import RESULTS_FILE, SCHEMA
from app.extension import offload

bp = Blueprint("compare", __name__)
log = logging.getLogger(__name__)

# Chart names the bench writes: lowercase words, a .png suffix, no path separators.
CHART_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}\.png")
# The page's content column (40rem less padding) less a figure's default margins.
CHART_DISPLAY_WIDTH = 512
MODE_ORDER = ("noop", "insert-only", "serial", "parallel", "queued")
NOT_MEASURED = "\u2013"  # an en dash
TIMES = "\u00d7"


def results_dir() -> Path:
    return Path(offload().settings.bench_results_dir)


def load_results(directory: Path) -> tuple[dict[str, Any] | None, str | None]:
    """(results, None), or (None, why there are none to show)."""
    try:
        data = json.loads((directory / RESULTS_FILE).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None, None
    except (OSError, ValueError) as exc:
        log.warning("cannot read %s: %s", directory / RESULTS_FILE, exc)
        return None, "The results file could not be read."
    if not isinstance(data, dict) or data.get("schema") != SCHEMA:
        return None, "The results file was written by another version of the benchmark."
    return data, None


def ms(value: float | None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return NOT_MEASURED
    return f"{value:.2f}" if value < 10 else f"{value:.1f}"


def count(value: float | None) -> str:
    return NOT_MEASURED if value is None else f"{value:,.0f}"


def ratio(value: float | None) -> str:
    return NOT_MEASURED if value is None else f"{value:.1f}{TIMES}"


def latency_rows(
    points: list[dict[str, Any]], textbook: dict[str, Any], first_level: int | None
) -> list[dict[str, Any]]:
    levels: dict[int, list[dict[str, Any]]] = {}
    for point in points:
        levels.setdefault(point["concurrency"], []).append(point)
    tables = []
    for level, members in sorted(levels.items()):
        members.sort(key=lambda p: MODE_ORDER.index(p["mode"]) if p["mode"] in MODE_ORDER else 99)
        rows = []
        for point in members:
            book = textbook.get(point["mode"]) if level == first_level else None
            delivery = (point.get("delivery_ms") or {}).get("both") or {}
            rows.append(
                {
                    "mode": point["mode"],
                    "p50": ms(point["latency_ms"]["p50"]),
                    "p95": ms(point["latency_ms"]["p95"]),
                    "p99": ms(point["latency_ms"]["p99"]),
                    "rps": count(point["rps"]),
                    "errors": point["errors"],
                    "textbook": f"{book['ms']:g} ms, {book['rps']:g}/s" if book else "",
                    "lag": f"{ms(delivery.get('p50'))} / {ms(delivery.get('p99'))}"
                    if delivery
                    else "",
                }
            )
        tables.append({"concurrency": level, "rows": rows})
    return tables


def nagle_rows(results: dict[str, Any]) -> list[dict[str, str]]:
    with_it = {
        p["mode"]: p for p in results["points"] if p["concurrency"] == 1 and p["tcp_nodelay"]
    }
    rows = []
    for point in results.get("nagle") or []:
        before = with_it.get(point["mode"])
        a = before["latency_ms"]["p50"] if before else None
        b = point["latency_ms"]["p50"]
        rows.append(
            {
                "mode": point["mode"],
                "with": ms(a),
                "without": ms(b),
                "difference": f"{b - a:+.1f} ms"
                if a is not None and b is not None
                else NOT_MEASURED,
            }
        )
    return rows


CPU_PARTS = ("web", "consumers", "relay", "sinks", "rabbitmq", "loadgen", "bench")


def cpu_rows(points: list[dict[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    for point in points:
        figures = point.get("cpu")
        if not figures:
            continue
        busy, others = figures.get("machine_busy"), figures.get("others_cores")
        rows.append(
            {
                "concurrency": point["concurrency"],
                "mode": point["mode"],
                "parts": [ms(figures["ms_per_request"].get(part)) for part in CPU_PARTS],
                "busy": NOT_MEASURED if busy is None else f"{busy:.0%}",
                "others": NOT_MEASURED if others is None else f"{others:.2f}",
            }
        )
    return rows


def diagnostics(results: dict[str, Any]) -> dict[str, Any]:
    probe = results.get("lag_probe")
    lag = None
    if probe and probe.get("delivery_ms"):
        delivery = probe["delivery_ms"]
        lag = {
            "rate": f"{probe['rate']:g}",
            "email": ms(delivery["email"]["p50"]),
            "sms": ms(delivery["sms"]["p50"]),
            "both_p50": ms(delivery["both"]["p50"]),
            "both_p99": ms(delivery["both"]["p99"]),
        }
    running = {p["concurrency"]: p for p in results.get("points") or [] if p["mode"] == "queued"}
    inserts = {
        p["concurrency"]: p for p in results.get("points") or [] if p["mode"] == "insert-only"
    }
    paused = []
    for point in results.get("consumers_paused") or []:
        level = point["concurrency"]
        queued, insert = running.get(level), inserts.get(level)
        paused.append(
            {
                "concurrency": level,
                "paused": f"{ms(point['latency_ms']['p50'])} ms, {count(point['rps'])}/s",
                "running": f"{ms(queued['latency_ms']['p50'])} ms, {count(queued['rps'])}/s"
                if queued
                else NOT_MEASURED,
                "insert": f"{ms(insert['latency_ms']['p50'])} ms, {count(insert['rps'])}/s"
                if insert
                else NOT_MEASURED,
            }
        )
    return {"lag": lag, "paused": paused}


def charts(results: dict[str, Any], directory: Path) -> list[dict[str, Any]]:
    shown = []
    for chart in results.get("charts") or []:
        name = str(chart.get("file", ""))
        if not CHART_NAME.fullmatch(name) or not (directory / name).is_file():
            continue
        width, height = int(chart.get("width") or 800), int(chart.get("height") or 500)
        display = min(width, CHART_DISPLAY_WIDTH)
        shown.append(
            {
                "file": name,
                "title": chart.get("title", name),
                "alt": chart.get("alt", ""),
                "width": display,
                "height": round(height * display / width) if width else height,
            }
        )
    return shown


def shape(results: dict[str, Any], directory: Path) -> dict[str, Any]:
    """Everything the template shows, formatted: the template only lays it out."""
    points = results.get("points") or []
    levels = sorted({p["concurrency"] for p in points})
    first = 1 if 1 in levels else (levels[0] if levels else None)
    peer = results.get("peer")
    peer_rows = []
    if peer:
        for side, label in (
            ("offload", "Offload consumer (pika, publisher confirms)"),
            ("celery", "Celery worker (delay() with confirm_publish)"),
        ):
            figures = peer[side]
            peer_rows.append(
                {
                    "label": label,
                    "publish_p50": ms(figures["publish_ms"]["p50"]),
                    "publish_p99": ms(figures["publish_ms"]["p99"]),
                    "drain": count(figures["drain_jobs_per_s"]),
                }
            )
    return {
        "meta": results["meta"],
        "targets": results.get("targets") or [],
        "tables": latency_rows(points, results.get("textbook") or {}, first),
        "ratios": [
            {
                "concurrency": row["concurrency"],
                "serial": ratio(row.get("serial_over_queued")),
                "parallel": ratio(row.get("parallel_over_queued")),
            }
            for row in results.get("ratios") or []
        ],
        # The other web shapes the run swept (gunicorn with its workers), each apart.
        "other_sweeps": [
            {
                "server": sweep["server"],
                "label": sweep["label"],
                "workers": sweep["workers"],
                "tables": latency_rows(sweep["points"], {}, None),
            }
            for sweep in results.get("other_servers") or []
        ],
        "nagle": nagle_rows(results),
        "cpu_parts": CPU_PARTS,
        "cpu": cpu_rows(points),
        "diagnostics": diagnostics(results),
        "burst": results.get("burst"),
        "peer": peer,
        "peer_rows": peer_rows,
        "charts": charts(results, directory),
        "report": results.get("report", ""),
    }


@bp.get("/compare")
def compare() -> str:
    directory = results_dir()
    results, problem = load_results(directory)
    if results is None:
        return render_template("compare.html", view=None, problem=problem)
    try:
        view = shape(results, directory)
    except (KeyError, TypeError, ValueError) as exc:
        log.warning("unexpected shape in %s: %r", directory / RESULTS_FILE, exc)
        return render_template(
            "compare.html", view=None, problem="The results file is incomplete or malformed."
        )
    return render_template("compare.html", view=view, problem=None)


@bp.get("/compare/charts/<name>")
def chart(name: str) -> Response:
    if not CHART_NAME.fullmatch(name):
        abort(404)
    # send_from_directory refuses paths outside the folder too; the pattern already allows none.
    return send_from_directory(
        results_dir().resolve(), name, mimetype="image/png", max_age=60, conditional=True
    )
