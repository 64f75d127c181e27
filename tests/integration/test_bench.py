"""The benchmark at a tiny setting, on a stack of its own: structure and sanity, never timings.

One run (about a second per point) feeds every slow test here; its output is checked for shape
(every mode and baseline at every level, for both server shapes, the extras, the targets, the
files) and for sanity that holds on any machine (no errors, serial slower than queued, every
queued message delivered). No test here compares a duration with a fixed number of
milliseconds, and no target has to PASS: only be judged.
"""

from __future__ import annotations

import dataclasses
import json
import random
from pathlib import Path
from typing import Any

import phonenumbers
import pytest
import webtest

from app import create_app
from app.bench_results import SCHEMA
from app.config import Settings
from app.messaging import InMemoryPublisher
from app.senders import RecordingSender
from bench.aggregate import MODES, find_point
from bench.runner import BenchOptions
from bench.users import UserFactory, capacity
from tests.conftest import require

LEVELS = (1, 4)
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def bench_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], Path, list[str]]:
    from bench.__main__ import finish
    from bench.runner import run_bench
    from devstack.broker_node import rabbitmq_installed

    require(rabbitmq_installed(), "RabbitMQ (apt-get install rabbitmq-server)")
    base = tmp_path_factory.mktemp("bench")
    options = BenchOptions(
        concurrency=LEVELS,
        duration=1.0,
        rounds=1,
        warmup=0.2,
        nagle_duration=0.6,
        diagnostics_duration=0.6,
        burst_requests=150,
        burst_concurrency=20,
        peer_jobs=40,
        out=base / "results",
        run_dir=base / "run",
        command="pytest tests/integration/test_bench.py",
    )
    lines: list[str] = []
    results = run_bench(options, lines.append)
    finish(results, options.out)
    return results, options.out, lines


def app_reading(settings: Settings, results_dir: Path) -> webtest.TestApp:
    settings = dataclasses.replace(settings, bench_results_dir=str(results_dir))
    return webtest.TestApp(
        create_app(
            settings,
            publisher=InMemoryPublisher(),
            email_sender=RecordingSender(),
            sms_sender=RecordingSender(),
        )
    )


# -- the run -------------------------------------------------------------------------------------


@pytest.mark.integration
@pytest.mark.slow
def test_every_mode_and_baseline_at_every_level(bench_run):
    results, _out, lines = bench_run
    for level in LEVELS:
        for mode in MODES:
            point = find_point(results["points"], mode, level)
            assert point is not None, f"{mode} at c={level} missing"
            assert point["requests"] > 0
            assert point["rps"] > 0
            latency = point["latency_ms"]
            assert 0 < latency["p50"] <= latency["p95"] <= latency["p99"] <= latency["max"]
    assert {p["mode"] for p in results["nagle"]} == set(MODES)
    assert all(not p["tcp_nodelay"] and p["concurrency"] == 1 for p in results["nagle"])
    # progress: one line per finished slice (both sweeps), and the extras announced
    assert sum("round 1/1" in line for line in lines) == 2 * len(LEVELS) * len(MODES)


@pytest.mark.integration
@pytest.mark.slow
def test_both_server_shapes_swept_and_kept_apart(bench_run):
    results, _out, lines = bench_run
    assert results["meta"]["servers"] == ["wsgi", "gunicorn"]
    assert {p["server"] for p in results["points"]} == {"wsgi"}
    [gunicorn] = results["other_servers"]
    assert gunicorn["server"] == "gunicorn"
    assert gunicorn["workers"] == 2
    assert "gunicorn" in gunicorn["label"]
    for level in LEVELS:
        for mode in MODES:
            point = find_point(gunicorn["points"], mode, level)
            assert point is not None, f"gunicorn: {mode} at c={level} missing"
            assert point["server"] == "gunicorn"
            assert point["requests"] > 0 and point["errors"] == 0
    assert [row["concurrency"] for row in gunicorn["ratios"]] == list(LEVELS)
    assert any("sweep with the web as gunicorn" in line for line in lines)
    report = results["report"]
    assert "== web: python wsgi.py" in report and "== web: gunicorn" in report
    # the gunicorn web really was gunicorn, with its two workers
    queued = find_point(gunicorn["points"], "queued", max(LEVELS))
    assert queued["delivery_ms"]["undelivered"] == 0


@pytest.mark.integration
@pytest.mark.slow
def test_event_loop_stalls_counted_per_point(bench_run):
    results = bench_run[0]
    assert results["meta"]["hub_block_ms"] == 20
    sweeps = [results["points"], results["other_servers"][0]["points"], results["nagle"]]
    for points in sweeps:
        for point in points:
            stalls = point["hub_stalls"]
            assert isinstance(stalls, int) and stalls >= 0, (point["server"], point["mode"])
    assert "stalls" in results["report"]


@pytest.mark.integration
@pytest.mark.slow
def test_no_errors_anywhere(bench_run):
    results, _out, _lines = bench_run
    for point in results["points"] + results["nagle"]:
        assert point["errors"] == 0, (point["mode"], point["concurrency"], point["error_kinds"])
    assert results["burst"]["errors"] == 0


@pytest.mark.integration
@pytest.mark.slow
def test_serial_is_slower_than_queued(bench_run):
    results, _out, _lines = bench_run
    for level in LEVELS:
        serial = find_point(results["points"], "serial", level)
        queued = find_point(results["points"], "queued", level)
        assert serial["latency_ms"]["p50"] > queued["latency_ms"]["p50"]
    # the sends show up in the server's own step timings
    serial = find_point(results["points"], "serial", 1)
    assert {"db", "email", "sms"} <= serial["server_ms"].keys()
    assert "publish" in find_point(results["points"], "queued", 1)["server_ms"]


@pytest.mark.integration
@pytest.mark.slow
def test_queued_messages_all_delivered_with_a_lag(bench_run):
    results, _out, _lines = bench_run
    for level in LEVELS:
        delivery = find_point(results["points"], "queued", level)["delivery_ms"]
        assert delivery["undelivered"] == 0
        for channel in ("email", "sms", "both"):
            assert delivery[channel]["n"] > 0
            assert delivery[channel]["p50"] > 0
    for mode in ("serial", "parallel", "insert-only", "noop"):
        assert find_point(results["points"], mode, 1)["delivery_ms"] is None
    depth = results["queue_depth"]
    assert len(depth["t"]) == len(depth["email"]) == len(depth["sms"]) > 0


@pytest.mark.integration
@pytest.mark.slow
def test_diagnostics_paced_lag_and_consumers_paused(bench_run):
    results = bench_run[0]
    probe = results["lag_probe"]
    parallel = find_point(results["points"], "parallel", 1)
    assert probe["rate"] == pytest.approx(parallel["rps"], rel=0.01)
    assert probe["delivery_ms"]["undelivered"] == 0
    assert probe["delivery_ms"]["both"]["n"] > 0
    paced = results["paced_baselines"]
    assert [(p["mode"], p["concurrency"]) for p in paced] == [("noop", 1), ("insert-only", 1)]
    for point in paced:
        assert point["rate"] == probe["rate"]
        assert point["errors"] == 0 and point["requests"] > 0
    assert "db" in paced[1]["server_ms"]
    assert "(parallel mode's rate)" in results["report"]
    paused = results["consumers_paused"]
    assert [(p["mode"], p["concurrency"], p["consumers"]) for p in paused] == [
        ("queued", 1, "paused"),
        ("queued", 4, "paused"),
    ]
    assert all(p["errors"] == 0 and p["requests"] > 0 for p in paused)


@pytest.mark.integration
@pytest.mark.slow
def test_cpu_per_request_by_part(bench_run):
    point = find_point(bench_run[0]["points"], "queued", 4)
    require(point["cpu"] is not None, "per-process CPU figures from /proc")
    figures = point["cpu"]["ms_per_request"]
    assert figures.keys() >= {"web", "consumers", "sinks", "rabbitmq", "loadgen", "bench"}
    assert figures["web"] > 0 and figures["consumers"] > 0
    assert 0 < point["cpu"]["machine_busy"] <= 1


@pytest.mark.integration
@pytest.mark.slow
def test_cpu_while_the_load_lasted_is_part_of_the_whole(bench_run):
    """The second CPU table counts each slice's load without the drain after it: for every
    part it can only be less than the first, and the report shows it at the highest level."""
    results, _out, _argv = bench_run
    for points in (results["points"], results["other_servers"][0]["points"]):
        for point in points:
            require(point["cpu_load"] is not None, "per-process CPU figures from /proc")
            whole = point["cpu"]["ms_per_request"]
            for part, during in point["cpu_load"]["ms_per_request"].items():
                assert during <= whole[part] + 0.002, (point["mode"], part, during, whole[part])
        queued = find_point(points, "queued", max(LEVELS))
        assert queued["cpu_load"]["ms_per_request"]["web"] > 0
    assert f"c={max(LEVELS)}: CPU per request while the load lasted" in results["report"]


@pytest.mark.integration
@pytest.mark.slow
def test_what_the_web_did_during_the_load(bench_run):
    results = bench_run[0]
    for points in (results["points"], results["other_servers"][0]["points"]):
        shares = find_point(points, "queued", max(LEVELS))["web_threads"]
        require(shares is not None, "the scheduler's figures from /proc/PID/schedstat")
        assert shares["running"] > 0
        assert sum(shares.values()) == pytest.approx(1, abs=0.01)
    assert "the web's serving threads during the load" in results["report"]


@pytest.mark.integration
@pytest.mark.slow
def test_burst_is_absorbed_and_drained(bench_run):
    burst = bench_run[0]["burst"]
    assert burst["accepted"] == burst["requests"] == 150
    for channel in ("email", "sms"):
        figures = burst["channels"][channel]
        assert figures["delivered"] == burst["accepted"]
        assert figures["missing"] == 0
    timeline = burst["timeline"]
    assert len(timeline["accepted_s"]) == 150
    assert timeline["depth_s"]


@pytest.mark.integration
@pytest.mark.slow
def test_celery_peer_measured_on_both_sides(bench_run):
    peer = bench_run[0]["peer"]
    assert peer["order"] == ["offload", "celery", "celery", "offload"]
    assert peer["sink_delay_ms"] == 50
    zero = peer["zero_delay"]
    assert zero["sink_delay_ms"] == 0 and zero["method"] == "backlog"
    assert zero["order"] == peer["order"]
    for figures in (peer, zero):
        for side in ("offload", "celery"):
            assert figures[side]["publish_ms"]["p50"] > 0
            assert figures[side]["drain_jobs_per_s"] > 0


@pytest.mark.integration
@pytest.mark.slow
def test_targets_are_all_judged(bench_run):
    targets = bench_run[0]["targets"]
    sweep = [
        "web-cpu-insert",
        "web-cpu-queued",
        "consumer-cpu",
        "order-p50",
        "order-rps",
        "queued-vs-serial",
        "throughput",
        "queued",
        "stalls",
    ]
    assert [t["key"] for t in targets] == [
        "serial",
        "parallel",
        "delivery",
        "nodelay",
        *sweep,
        *(f"{key}@gunicorn" for key in sweep),
        "peer-drain",
        "peer-publish",
        "peer-drain-0ms",
        "peer-publish-0ms",
    ]
    # every one judged from this run, with its figure (CPU figures need /proc: Linux)
    for target in targets:
        assert target["status"] in {"PASS", "MISS"}, target
        assert target["measured"] and "not measured" not in target["measured"], target
    report = bench_run[0]["report"]
    for target in targets:
        assert f"{target['status']:<4}  {target['title']}" in report


@pytest.mark.integration
@pytest.mark.slow
def test_json_and_charts_written(bench_run):
    results, out, _lines = bench_run
    # strict JSON: a figure that could not be measured is null, never NaN
    saved = json.loads((out / "results.json").read_text(), parse_constant=pytest.fail)
    assert saved["schema"] == SCHEMA
    assert saved["points"] == results["points"]
    assert "serial / queued" in saved["report"]
    names = {chart["file"] for chart in saved["charts"]}
    assert names == {"latency.png", "burst.png", "queue_depth.png"}
    for name in names:
        assert (out / name).read_bytes().startswith(PNG_MAGIC)


@pytest.mark.integration
@pytest.mark.slow
def test_compare_page_shows_the_run(bench_run, settings):
    _results, out, _lines = bench_run
    app = app_reading(settings, out)
    page = app.get("/compare")
    assert "Targets" in page.text
    assert page.html.find(id="no-results") is None
    for mode in MODES:
        assert page.html.find("th", string=mode) is not None
    images = page.html.find_all("img")
    assert len(images) == 3
    for image in images:
        assert image["alt"]
        chart = app.get(image["src"])
        assert chart.content_type == "image/png"
        assert chart.body.startswith(PNG_MAGIC)


# -- without a run ---------------------------------------------------------------------------------


def test_compare_page_before_any_run(settings, tmp_path):
    page = app_reading(settings, tmp_path / "nothing-here").get("/compare")
    message = page.html.find(id="no-results").get_text(" ", strip=True)
    assert "No results yet" in message
    assert "make bench" in message
    assert page.html.find("script") is None
    assert page.html.find(style=True) is None


def test_compare_page_with_a_foreign_results_file(settings, tmp_path):
    (tmp_path / "results.json").write_text(json.dumps({"schema": SCHEMA + 1}))
    page = app_reading(settings, tmp_path).get("/compare")
    assert "another version" in page.html.find(id="no-results").get_text()


@pytest.mark.parametrize("name", ["results.json", "..%2Fsecret.png", ".hidden.png", "A.PNG"])
def test_chart_route_serves_only_chart_names(settings, tmp_path, name):
    (tmp_path / "results.json").write_text("{}")
    app_reading(settings, tmp_path).get(f"/compare/charts/{name}", status=404)


def test_generated_users_are_valid_and_distinct():
    users = UserFactory("t3st", offset=random.randrange(capacity()))
    indices = random.sample(range(5_000_000), 3000) + list(range(1000))
    phones = {users.phone(i) for i in indices}
    emails = {users.email(i) for i in indices}
    assert len(phones) == len(emails) == len(set(indices))
    for phone in phones:
        parsed = phonenumbers.parse(phone)
        assert phonenumbers.is_valid_number(parsed), phone
        assert phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164) == phone
    # consecutive users differ in area code
    assert len({users.phone(i)[2:5] for i in range(10)}) == 10
