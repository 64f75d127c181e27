"""The bench's account of the web's serving threads, read from a /proc laid out by hand: which
processes count (the ones that serve, not gunicorn's arbiter), and how the scheduler's figures
become shares of the load's time."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from bench import cpu
from bench.aggregate import web_thread_shares
from bench.report import web_threads_table


def fake_process(proc: Path, pid: int, parent: int, running_ns: int, waiting_ns: int) -> None:
    folder = proc / str(pid)
    folder.mkdir(parents=True, exist_ok=True)
    # /proc/PID/stat: pid (comm) state ppid ... utime (14th) stime (15th) ...
    fields = ["S", str(parent)] + ["0"] * 9 + ["5", "1"] + ["0"] * 10
    (folder / "stat").write_text(f"{pid} (python (web)) {' '.join(fields)}\n")
    (folder / "schedstat").write_text(f"{running_ns} {waiting_ns} 42\n")


@pytest.fixture
def proc(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    (tmp_path / "stat").write_text("cpu  1 0 1 10 0 0 0 0 0 0\n")
    monkeypatch.setattr(cpu, "PROC", tmp_path)
    return tmp_path


def test_only_the_processes_that_serve_are_counted(proc: Path) -> None:
    fake_process(proc, 100, 1, 9_000_000_000, 1_000_000_000)  # gunicorn's arbiter
    fake_process(proc, 101, 100, 2_000_000_000, 500_000_000)  # its workers
    fake_process(proc, 102, 100, 3_000_000_000, 0)
    fake_process(proc, 200, 1, 7_000_000_000, 0)  # not the web's

    sample = cpu.sched_sample([100], now=5.0)

    assert sample is not None
    assert sample.threads == {101: (2.0, 0.5), 102: (3.0, 0.0)}
    assert sample.at == 5.0


def test_a_part_counts_the_cpu_of_its_whole_process_tree(proc: Path) -> None:
    fake_process(proc, 100, 1, 0, 0)
    fake_process(proc, 101, 100, 0, 0)
    fake_process(proc, 102, 101, 0, 0)
    fake_process(proc, 200, 1, 0, 0)  # not the web's

    sample = cpu.sample({"web": [100]})

    assert sample is not None
    # 6 ticks each (utime 5 + stime 1), three processes
    assert sample.seconds["web"] == pytest.approx(18 / os.sysconf("SC_CLK_TCK"))


def test_a_single_process_server_is_its_own_serving_thread(proc: Path) -> None:
    fake_process(proc, 300, 1, 1_500_000_000, 250_000_000)
    sample = cpu.sched_sample([300], now=1.0)
    assert sample is not None and sample.threads == {300: (1.5, 0.25)}


def test_the_difference_spans_each_thread_present_at_both_ends() -> None:
    before = cpu.SchedSample({1: (1.0, 0.1), 2: (2.0, 0.2), 3: (0.0, 0.0)}, at=10.0)
    after = cpu.SchedSample({1: (1.8, 0.2), 2: (2.6, 0.4), 4: (9.0, 9.0)}, at=11.0)

    figures = cpu.sched_difference(before, after)

    assert figures == pytest.approx({"running": 1.4, "waiting": 0.3, "span": 2.0})


def test_no_figures_without_a_sample_or_a_common_thread() -> None:
    sample = cpu.SchedSample({1: (1.0, 0.1)}, at=1.0)
    assert cpu.sched_difference(None, sample) is None
    assert cpu.sched_difference(sample, cpu.SchedSample({2: (1.0, 0.1)}, at=2.0)) is None


def test_shares_over_slices_and_their_table() -> None:
    class Piece:
        def __init__(self, web_sched: dict[str, float] | None) -> None:
            self.web_sched = web_sched

    pieces = [
        Piece({"running": 1.6, "waiting": 0.2, "span": 2.0}),
        Piece({"running": 0.8, "waiting": 0.2, "span": 1.0}),
        Piece(None),  # a slice without /proc
    ]

    shares = web_thread_shares(pieces)  # type: ignore[arg-type]

    assert shares == pytest.approx({"running": 0.8, "waiting": 0.133, "asleep": 0.067}, abs=1e-3)
    table = web_threads_table([{"concurrency": 50, "mode": "queued", "web_threads": shares}])
    assert table[-1].split() == ["50", "queued", "80%", "13%", "7%"]
    assert web_thread_shares([Piece(None)]) is None  # type: ignore[list-item]
