"""The target table's arithmetic on made-up points (no run): each sweep target is judged for
each server shape, and a figure on the wrong side of its bound is a MISS."""

from __future__ import annotations

from typing import Any

from bench.report import paced_baselines
from bench.stalls import LogLineCounter
from bench.targets import evaluate

RPS = {"noop": 3000, "insert-only": 400, "serial": 100, "parallel": 150, "queued": 350}
P50 = {"noop": 1.0, "insert-only": 3.0, "serial": 110.0, "parallel": 60.0, "queued": 4.0}
WEB_CPU = {"noop": 0.4, "insert-only": 1.2, "serial": 3.0, "parallel": 3.0, "queued": 1.6}


def point(server: str, mode: str, level: int, **changes: Any) -> dict[str, Any]:
    figures = {
        "mode": mode,
        "concurrency": level,
        "tcp_nodelay": True,
        "server": server,
        "rps": RPS[mode],
        "latency_ms": {"p50": P50[mode]},
        "server_ms": {},
        "delivery_ms": None,
        "hub_stalls": 0,
        "cpu": {
            "ms_per_request": {
                "web": WEB_CPU[mode],
                "consumers": 1.5 if mode == "queued" else 0.0,
            }
        },
    }
    figures.update(changes)
    return figures


def sweep(server: str) -> list[dict[str, Any]]:
    return [point(server, mode, level) for level in (1, 50) for mode in RPS]


def results(gunicorn: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "meta": {"sink_delay_ms": 50, "hub_block_ms": 20, "server": "wsgi"},
        "points": sweep("wsgi"),
        "other_servers": [{"server": "gunicorn", "workers": 2, "points": gunicorn}],
    }


def by_key(run: dict[str, Any]) -> dict[str, str]:
    return {target["key"]: target["status"] for target in evaluate(run)}


def test_sweep_targets_pass_for_both_shapes():
    statuses = by_key(results(sweep("gunicorn")))
    for key in (
        "web-cpu-insert",
        "web-cpu-queued",
        "consumer-cpu",
        "order-p50",
        "order-rps",
        "queued-vs-serial",
        "throughput",
        "queued",
        "stalls",
    ):
        assert statuses[key] == "PASS", key
        assert statuses[f"{key}@gunicorn"] == "PASS", key
    # nothing measured for the extras and the peer
    assert statuses["peer-drain-0ms"] == statuses["nodelay"] == "N/A"


def test_a_miss_on_the_second_shape_is_its_own():
    gunicorn = sweep("gunicorn")
    for figures in gunicorn:
        if figures["mode"] == "queued" and figures["concurrency"] == 50:
            figures.update(hub_stalls=2, rps=120.0, latency_ms={"p50": 70.0})
            figures["cpu"]["ms_per_request"]["consumers"] = 2.5
    statuses = by_key(results(gunicorn))
    for key in ("stalls", "queued-vs-serial", "order-p50", "order-rps", "consumer-cpu"):
        assert statuses[f"{key}@gunicorn"] == "MISS", key
        assert statuses[key] == "PASS", key


def test_the_paced_figures_are_shown_beside_the_one_client_bounds_not_judged():
    run = results(sweep("gunicorn"))
    # parallel 60 ms against 50 + insert-only's 3 ms back to back: +13.2%, a miss
    parallel = next(t for t in evaluate(run) if t["key"] == "parallel")
    assert parallel["status"] == "MISS"
    assert "paced" not in parallel["measured"]
    assert paced_baselines(run) == []

    run["paced_baselines"] = [
        point("wsgi", "noop", 1, rate=16.7, latency_ms={"p50": 1.6}),
        point("wsgi", "insert-only", 1, rate=16.7, latency_ms={"p50": 6.0}, server_ms={"db": 2.1}),
    ]
    parallel = next(t for t in evaluate(run) if t["key"] == "parallel")
    assert parallel["status"] == "MISS"  # the bound stays the back-to-back one
    assert (
        "insert-only paced at parallel's rate 6.00 ms: 50 + 6.00 = 56.0 ms (+7.1%)"
        in parallel["measured"]
    )
    # queued at one client: 4 ms against 3 back to back; the lag probe ran at the same pace
    run["lag_probe"] = point("wsgi", "queued", 1, rate=16.7, latency_ms={"p50": 7.1})
    statuses = {t["key"]: t for t in evaluate(run)}
    assert statuses["queued"]["status"] == "PASS"
    assert statuses["queued"]["measured"].endswith(
        "; paced at parallel's rate: 7.10 ms vs insert-only 6.00 ms (+1.10 ms)"
    )
    assert "paced" not in statuses["queued@gunicorn"]["measured"]  # paced on the first only
    lines = paced_baselines(run)
    assert "16.7 req/s" in lines[1]
    assert lines[3] == "  noop         p50 1.60 ms (back to back 1.00 ms)"
    assert lines[4] == (
        "  insert-only  p50 6.00 ms (back to back 3.00 ms); its transaction 2.10 ms "
        "(back to back - ms)"
    )


def test_stall_lines_are_counted_once_each_even_when_split(tmp_path):
    log = tmp_path / "web.log"
    counter = LogLineCounter(log)
    assert counter.count() == 0  # no file yet
    log.write_bytes(b'{"message": "the event loop was held for over 20 ms by x"}\n{"mess')
    assert counter.count() == 1
    with log.open("ab") as file:
        file.write(b'age": "the event loop was held for over 20 ms by y"}\nother\n')
    assert counter.count() == 2


def test_the_throughput_ratios_show_each_round_beside_the_pooled_one():
    run = results(sweep("gunicorn"))
    rounds = {"queued": [300, 330, 420], "insert-only": [400, 420, 380], "serial": [100, 95, 105]}
    for figures in run["points"]:
        if figures["concurrency"] == 50 and figures["mode"] in rounds:
            figures["rounds"] = [{"rps": rps, "p50": 1.0} for rps in rounds[figures["mode"]]]
    targets = {target["key"]: target for target in evaluate(run)}
    # Judged on the pooled figures (350 against 0.8 x 400, 3.5 x 100); the rounds only shown.
    assert targets["throughput"]["status"] == targets["queued-vs-serial"]["status"] == "PASS"
    assert "(0.88x; by round 0.75x, 0.79x, 1.11x)" in targets["throughput"]["measured"]
    assert "(3.50x; by round 3.00x, 3.47x, 4.00x)" in targets["queued-vs-serial"]["measured"]
    # gunicorn's made-up points have no rounds: nothing to show
    assert "by round" not in targets["throughput@gunicorn"]["measured"]
