"""`/compare` shows what `make bench` wrote: every web shape's sweep, not only the first."""

from __future__ import annotations

import json

from app.bench_results import RESULTS_FILE, SCHEMA
from tests.functional.helpers import make_testapp


def point(mode, concurrency, p50, rps, server):
    return {
        "mode": mode,
        "concurrency": concurrency,
        "tcp_nodelay": True,
        "server": server,
        "latency_ms": {"p50": p50, "p95": p50 * 2, "p99": p50 * 3},
        "rps": rps,
        "errors": 0,
    }


def results(tmp_path):
    meta = {
        "server": "wsgi",
        "sink_delay_ms": 50,
        "started_at": "2026-11-27T08:00:00+00:00",
        "elapsed_s": 500,
        "host": {"cpus": 2, "python": "3.11", "sqlite": "3.40"},
        "consumer_concurrency": 50,
        "tcp_nodelay": True,
        "command": "python -m bench",
    }
    data = {
        "schema": SCHEMA,
        "meta": meta,
        "points": [point("queued", 50, 41.5, 201, "wsgi")],
        "other_servers": [
            {
                "server": "gunicorn",
                "label": "gunicorn -k gevent (the Procfile's line)",
                "workers": 2,
                "points": [point("queued", 50, 37.25, 233, "gunicorn")],
                "ratios": [],
            }
        ],
    }
    (tmp_path / RESULTS_FILE).write_text(json.dumps(data), encoding="utf-8")


def test_the_gunicorn_sweep_is_shown_beside_the_first(settings, publisher, tmp_path):
    results(tmp_path)
    page = make_testapp(settings, publisher, bench_results_dir=str(tmp_path)).get("/compare")
    text = page.text
    assert "41.5" in text and "201" in text  # python wsgi.py's sweep
    assert "The same sweep served by gunicorn -k gevent" in text
    assert "2 worker processes" in text
    assert "37.2" in text and "233" in text  # gunicorn's sweep
