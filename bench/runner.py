"""The run: start the stack, sweep modes x concurrency in alternating rounds, then the extras.

Order of a run (every part bounded; every process ours and stopped at the end):

1. the stack on free ports in `--run-dir`: private RabbitMQ node, SMTP and SMS sinks at
   `--delay-ms`, migrations, web (gevent WSGIServer), email and SMS consumers, relay;
2. the sweep: `--rounds` rounds; in each, every concurrency level, and at each level every mode
   for `--duration / --rounds` seconds after `--warmup`; the mode order rotates each round so no
   mode always runs first or right after another (drift and after-effects hit all alike);
   after a queued slice the run waits until the sinks have every message, for the delivery lag;
3. without TCP_NODELAY: the web server restarted without it, each mode at concurrency 1;
4. the burst (bench/burst.py) and the Celery peer (bench/peer.py).
"""

from __future__ import annotations

import math
import os
import platform
import random
import secrets
import shutil
import sqlite3
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from app.bench_results import SCHEMA
from bench import cpu
from bench.driver import LoadGenerator
from bench.protocol import NOOP, LoadResult, LoadSpec
from bench.queues import QueueDepthPoller
from bench.sinkwatch import RecordTail, wait_for_all
from bench.stats import finite_or_none, summarize
from bench.users import UserFactory, capacity

MODES: tuple[str, ...] = (NOOP, "insert-only", "serial", "parallel", "queued")
TEXTBOOK: dict[str, dict[str, float]] = {
    "serial": {"ms": 150.0, "rps": 7.0},
    "parallel": {"ms": 100.0, "rps": 10.0},
    "queued": {"ms": 50.0, "rps": 20.0},
}
IDLE_TIMEOUT = 60.0  # waiting for the queues to empty before a part that needs them empty

Progress = Callable[[str], None]


@dataclass(frozen=True)
class BenchOptions:
    concurrency: tuple[int, ...] = (1, 10, 50)
    duration: float = 6.0  # measured seconds per mode and level, split over the rounds
    rounds: int = 3
    warmup: float = 0.5  # seconds before each slice's measurement
    delay_ms: float = 50.0
    consumer_concurrency: int = 10
    modes: tuple[str, ...] = MODES
    nodelay: bool = True  # False: the whole run without TCP_NODELAY on the server
    nagle_duration: float = 3.0  # per mode at concurrency 1 without TCP_NODELAY; 0 skips
    diagnostics_duration: float = 3.0  # lag probe and consumers-paused slices; 0 skips
    lag_rate: float | None = None  # the lag probe's pace; None: parallel mode's c=1 rate
    burst_requests: int = 2000  # 0 skips
    burst_concurrency: int = 100
    peer_jobs: int = 1000  # per side; 0 skips
    out: Path = Path("bench-results")
    run_dir: Path = Path(".run/bench")
    command: str = "python -m bench"


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
    cpu: cpu.CpuSample | None = None

    @property
    def fallbacks(self) -> int:
        """Measured requests whose jobs were left to the outbox relay (publish over budget)."""
        return sum(1 for i in self.ok if self.result.pending and self.result.pending[i])

    @property
    def duration_s(self) -> float:
        return self.result.measure_until - self.result.measure_from

    @property
    def errors(self) -> int:
        return len(self.measured) - len(self.ok)


class BenchSession:
    """The running stack, the load generator and the watchers, shared by every part of a run."""

    def __init__(
        self,
        stack: Any,  # devstack.stack.Stack (imported lazily: it pulls in the migrations)
        loadgen: LoadGenerator,
        poller: QueueDepthPoller,
        options: BenchOptions,
        progress: Progress,
    ) -> None:
        self.stack = stack
        self.loadgen = loadgen
        self.poller = poller
        self.options = options
        self.progress = progress
        self.users = UserFactory(secrets.token_hex(3), random.randrange(capacity()))
        self.next_index = 0
        self.tails = {
            "email": RecordTail(stack.sinks["smtp"].record_path),
            "sms": RecordTail(stack.sinks["sms"].record_path),
        }
        self.delay_ms = float(stack.config.sink_delay_ms)
        self.consumer_concurrency = int(stack.config.consumer_concurrency)
        self.started = time.monotonic()

    # -- one slice -------------------------------------------------------------------------

    def spec(
        self,
        mode: str,
        concurrency: int,
        *,
        warmup: float,
        duration: float,
        requests: int | None = None,
        rate: float | None = None,
    ) -> LoadSpec:
        return LoadSpec(
            host="127.0.0.1",
            port=int(self.stack.config.web_port),
            mode=mode,
            concurrency=concurrency,
            warmup_s=warmup,
            duration_s=duration,
            first_index=self.next_index,
            nonce=self.users.nonce,
            offset=self.users.offset,
            requests=requests,
            rate=rate,
        )

    def load(self, spec: LoadSpec) -> LoadResult:
        result = self.loadgen.run(spec)
        self.next_index += result.indices_used
        return result

    def run_slice(
        self,
        mode: str,
        concurrency: int,
        duration: float,
        *,
        rate: float | None = None,
        deliver: bool = True,
    ) -> Slice:
        """One slice; for queued mode (unless `deliver` is False) wait for its messages."""
        self.wait_idle()
        spec = self.spec(
            mode, concurrency, warmup=self.options.warmup, duration=duration, rate=rate
        )
        before = self.cpu_sample()
        result = self.load(spec)
        expected_status = 200 if mode == NOOP else 201
        measured = result.measured()
        ok = [i for i in measured if result.status[i] == expected_status]
        piece = Slice(mode, concurrency, bool(self.stack.config.tcp_nodelay), result, measured, ok)
        if mode == "queued" and deliver:
            self.measure_delivery(piece, expected_status)
        piece.cpu = cpu.difference(before, self.cpu_sample())
        return piece

    def cpu_parts(self) -> dict[str, list[int]]:
        processes = self.stack.processes
        parts = {
            "web": [processes["web"].pid] if "web" in processes else [],
            "consumers": [processes[n].pid for n in ("email", "sms") if n in processes],
            "relay": [processes["relay"].pid] if "relay" in processes else [],
            "sinks": [sink.process.pid for sink in self.stack.sinks.values()],
            "rabbitmq": [pid] if self.stack.node and (pid := self.stack.node.pid()) else [],
            "loadgen": [self.loadgen.process.pid],
        }
        return parts

    def cpu_sample(self) -> cpu.CpuSample | None:
        taken = cpu.sample(self.cpu_parts())
        if taken is not None:
            own = os.times()
            taken.seconds["bench"] = own.user + own.system
        return taken

    def expected_recipients(
        self, result: LoadResult, positions: Sequence[int]
    ) -> dict[str, list[str]]:
        indices = [result.index[i] for i in positions]
        return {
            "email": [self.users.email(i) for i in indices],
            "sms": [self.users.phone(i) for i in indices],
        }

    def delivery_timeout(self, jobs: int) -> float:
        # The consumers' ceiling is concurrency / delay per channel; allow 8x that time, plus
        # the outbox relay's grace period and retry delays for the odd publish that failed.
        rate = self.consumer_concurrency / max(self.delay_ms / 1000, 0.001)
        return 60.0 + 8 * jobs / rate

    def measure_delivery(self, piece: Slice, expected_status: int = 201) -> None:
        result = piece.result
        # Every accepted request, warm-up included: its messages must be out before the next
        # slice, or the consumers would still be busy sending during it.
        accepted = [i for i, status in enumerate(result.status) if status == expected_status]
        expected = self.expected_recipients(result, accepted)
        missing = wait_for_all(self.tails, expected, timeout=self.delivery_timeout(len(accepted)))
        piece.undelivered = max(missing.values(), default=0)
        piece.lag_ms = {"email": [], "sms": [], "both": []}
        for i in piece.ok:
            started = result.start[i]
            email_at = self.tails["email"].received_at.get(self.users.email(result.index[i]))
            sms_at = self.tails["sms"].received_at.get(self.users.phone(result.index[i]))
            if email_at is not None:
                piece.lag_ms["email"].append((email_at - started) * 1000)
            if sms_at is not None:
                piece.lag_ms["sms"].append((sms_at - started) * 1000)
            if email_at is not None and sms_at is not None:
                piece.lag_ms["both"].append((max(email_at, sms_at) - started) * 1000)
        window = self.poller.snapshot().between(result.measure_from, time.time())
        piece.depth_peak = window.peak()

    def wait_idle(self, timeout: float = IDLE_TIMEOUT) -> None:
        """Until both work queues are empty (bounded): leftovers would load the next part."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            latest = self.poller.latest()
            if latest and not any(latest.values()):
                return
            time.sleep(0.1)
        self.progress(f"warning: queues not empty after {timeout:.0f}s: {self.poller.latest()}")

    # -- the web server with and without TCP_NODELAY ----------------------------------------

    def restart_web(self, *, nodelay: bool) -> None:
        self.stack.stop_process("web")
        self.stack.config.tcp_nodelay = nodelay
        self.stack.start_web()

    def elapsed(self) -> str:
        seconds = int(time.monotonic() - self.started)
        return f"{seconds // 60}:{seconds % 60:02d}"


# -- the sweep and the TCP_NODELAY comparison ------------------------------------------------


def rotated(modes: Sequence[str], by: int) -> list[str]:
    shift = by % len(modes)
    return [*modes[shift:], *modes[:shift]]


def run_sweep(session: BenchSession) -> list[Slice]:
    options = session.options
    per_round = options.duration / options.rounds
    total = options.rounds * len(options.concurrency) * len(options.modes)
    slices: list[Slice] = []
    for round_number in range(options.rounds):
        for concurrency in options.concurrency:
            for mode in rotated(options.modes, round_number):
                piece = session.run_slice(mode, concurrency, per_round)
                slices.append(piece)
                session.progress(
                    f"[{len(slices):>3}/{total} {session.elapsed()}] round {round_number + 1}"
                    f"/{options.rounds} {describe_slice(piece)}"
                )
    return slices


def run_lag_probe(session: BenchSession, parallel_rps: float | None) -> dict[str, Any] | None:
    """Queued mode at one client, paced at the rate parallel mode managed: the delivery lag
    when the consumers are not behind, for a fair comparison with parallel mode's answer."""
    options = session.options
    if options.diagnostics_duration <= 0:
        return None
    rate = options.lag_rate or parallel_rps or 10.0
    piece = session.run_slice("queued", 1, options.diagnostics_duration, rate=rate)
    session.progress(
        f"[lag probe {session.elapsed()}] paced at {rate:.1f}/s {describe_slice(piece)}"
    )
    point = aggregate([piece])[0]
    point["rate"] = round(rate, 2)
    return point


def run_with_consumers_paused(session: BenchSession) -> list[dict[str, Any]]:
    """Queued mode with the consumers stopped while the load runs, then restarted and drained.

    What the request path of queued mode costs on its own, as when the consumers run on other
    machines; on one small machine they otherwise take their CPU from the web server. They are
    stopped cleanly (SIGTERM), not frozen with SIGSTOP: a consumer frozen inside a SQLite write
    transaction would hold the database's one write lock and stall every registration.
    """
    options = session.options
    if options.diagnostics_duration <= 0:
        return []
    levels = sorted({min(options.concurrency), max(options.concurrency)})
    consumers = [n for n in ("email", "sms") if n in session.stack.processes]
    slices = []
    for level in levels:
        for name in consumers:
            session.stack.stop_process(name)
        try:
            piece = session.run_slice("queued", level, options.diagnostics_duration, deliver=False)
        finally:
            for name in consumers:
                session.stack.start_worker(name)
        session.measure_delivery(piece)  # only to drain before what follows; the lag is void
        piece.lag_ms = {}
        slices.append(piece)
        session.progress(f"[consumers paused {session.elapsed()}] {describe_slice(piece)}")
    points = aggregate(slices)
    for point in points:
        point["consumers"] = "paused"
        point["delivery_ms"] = None
    return points


def run_without_nodelay(session: BenchSession) -> list[Slice]:
    options = session.options
    if not options.nodelay or options.nagle_duration <= 0:
        return []
    session.progress("restarting the web server without TCP_NODELAY")
    session.restart_web(nodelay=False)
    slices: list[Slice] = []
    try:
        for mode in options.modes:
            piece = session.run_slice(mode, 1, options.nagle_duration)
            slices.append(piece)
            session.progress(f"[nagle {session.elapsed()}] {describe_slice(piece)}")
    finally:
        session.restart_web(nodelay=True)
    return slices


def describe_slice(piece: Slice) -> str:
    latency = summarize([piece.result.latency_ms[i] for i in piece.ok])
    rps = len(piece.ok) / piece.duration_s if piece.duration_s > 0 else math.nan
    text = (
        f"c={piece.concurrency:<3} {piece.mode:<11} p50 {latency['p50']:7.1f} ms  "
        f"p99 {latency['p99']:7.1f} ms  {rps:7.1f} req/s  {piece.errors} err"
    )
    if piece.lag_ms:
        lag = summarize(piece.lag_ms["both"])
        text += f"  lag p50 {lag['p50']:.0f} ms"
        if piece.undelivered:
            text += f"  ({piece.undelivered} undelivered)"
        if piece.fallbacks:
            text += f"  ({piece.fallbacks} left to the relay)"
    return text


# -- aggregation into results ------------------------------------------------------------------


def _figures(summary: dict[str, float], keys: Sequence[str]) -> dict[str, float | None]:
    return {key: finite_or_none(summary[key]) for key in keys}


def aggregate(slices: Sequence[Slice]) -> list[dict[str, Any]]:
    """One point per (mode, concurrency, tcp_nodelay): the rounds' slices pooled."""
    groups: dict[tuple[str, int, bool], list[Slice]] = {}
    for piece in slices:
        groups.setdefault((piece.mode, piece.concurrency, piece.tcp_nodelay), []).append(piece)
    points = []
    for (mode, concurrency, nodelay), pieces in groups.items():
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


def cpu_per_request(pieces: Sequence[Slice]) -> dict[str, Any] | None:
    """ms of CPU per request for each part, and how busy the machine was, over the slices."""
    samples = [p.cpu for p in pieces if p.cpu is not None]
    requests = sum(len(p.result.start) for p in pieces if p.cpu is not None)
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


def depth_series(session: BenchSession, since: float, until: float) -> dict[str, Any]:
    samples = session.poller.snapshot().between(since, until)
    # Every other sample is plenty for the chart and halves the JSON.
    return {
        "t": [round(t - since, 2) for t in samples.t[::2]],
        "email": samples.depth["email"][::2],
        "sms": samples.depth["sms"][::2],
    }


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


def host_facts() -> dict[str, Any]:
    def package(name: str) -> str | None:
        try:
            return version(name)
        except PackageNotFoundError:
            return None

    return {
        "cpus": os.cpu_count(),
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "sqlite": sqlite3.sqlite_version,
        "packages": {name: package(name) for name in ("gevent", "pika", "flask", "celery")},
    }


# -- the whole run -------------------------------------------------------------------------------


def stack_config(options: BenchOptions) -> Any:
    from devstack.stack import StackConfig

    return StackConfig.on_free_ports(
        options.run_dir,
        sink_delay_ms=options.delay_ms,
        consumer_concurrency=options.consumer_concurrency,
        consumer_prefetch=2 * options.consumer_concurrency,
        tcp_nodelay=options.nodelay,
        extra_env={
            "BENCH_MODES": "true",
            # Thousands of registrations a minute from one address: the limiter would refuse
            # nearly all of them (and add a write per request).
            "RATE_LIMIT_ENABLED": "false",
        },
    )


RUN_DIR_MARKER = ".offload-bench-run"


class RunDirError(RuntimeError):
    """The run folder holds something the bench did not put there; it is left alone."""


def prepare_run_dir(run_dir: Path) -> None:
    """An empty run folder: a previous run's node data, database and records are removed.

    Only a folder the bench made (it carries a marker file) or an empty one is emptied, so a
    mistyped --run-dir never deletes anything else.
    """
    if run_dir.exists():
        if (run_dir / RUN_DIR_MARKER).exists():
            shutil.rmtree(run_dir)
        elif any(run_dir.iterdir()):
            raise RunDirError(
                f"{run_dir} is not empty and was not made by the bench; choose another --run-dir"
            )
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / RUN_DIR_MARKER).write_text("made by python -m bench; emptied by the next run\n")


def run_bench(options: BenchOptions, progress: Progress) -> dict[str, Any]:
    from bench.burst import run_burst
    from bench.peer import run_peer
    from devstack.stack import Stack

    started_at = datetime.now(UTC)
    host = host_facts()
    prepare_run_dir(options.run_dir)
    progress(
        f"starting the stack in {options.run_dir} (RabbitMQ node, sinks at "
        f"{options.delay_ms:g} ms, web, consumers x{options.consumer_concurrency}, relay)"
    )
    began = time.monotonic()
    stack = Stack(stack_config(options))
    with stack:
        progress(f"stack ready in {time.monotonic() - began:.1f}s at {stack.base_url}")
        poller = QueueDepthPoller(stack.amqp_url).start()
        try:
            with LoadGenerator(stack.log_dir / "loadgen.log") as loadgen:
                session = BenchSession(stack, loadgen, poller, options, progress)
                sweep_from = time.time()
                sweep = run_sweep(session)
                sweep_until = time.time()
                points = aggregate(sweep)
                parallel = find_point(points, "parallel", 1)
                lag_probe = run_lag_probe(session, parallel["rps"] if parallel else None)
                paused = run_with_consumers_paused(session)
                nagle = run_without_nodelay(session)
                burst = (
                    run_burst(session, options.burst_requests, options.burst_concurrency)
                    if options.burst_requests > 0
                    else None
                )
            peer = run_peer(session, options.peer_jobs) if options.peer_jobs > 0 else None
        finally:
            poller.stop()
        queue_depth = depth_series(session, sweep_from, sweep_until)
        windows = slice_windows(sweep, sweep_from)

    options_dict = {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(options).items()}
    return {
        "schema": SCHEMA,
        "meta": {
            "started_at": started_at.isoformat(timespec="seconds"),
            "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "elapsed_s": round((datetime.now(UTC) - started_at).total_seconds(), 1),
            "command": options.command,
            "options": options_dict,
            "host": host,
            "sink_delay_ms": options.delay_ms,
            "consumer_concurrency": options.consumer_concurrency,
            "consumer_send_ceiling_per_s": options.consumer_concurrency
            / max(options.delay_ms / 1000, 0.001),
            "tcp_nodelay": options.nodelay,
        },
        "textbook": TEXTBOOK,
        "points": points,
        "nagle": aggregate(nagle),
        "lag_probe": lag_probe,
        "consumers_paused": paused,
        "ratios": ratios(points, options.concurrency),
        "queue_depth": queue_depth,
        "slices": windows,
        "burst": burst,
        "peer": peer,
    }
