"""The run: start the stack, sweep modes x concurrency in alternating rounds, then the extras.

Order of a run (every part bounded; every process ours and stopped at the end):

1. the stack on free ports in `--run-dir`: private RabbitMQ node, SMTP and SMS sinks at
   `--delay-ms`, migrations, web (gevent WSGIServer), email and SMS consumers, relay; the web
   counts event-loop stalls over `--hub-block-ms` (HUB_BLOCK_REPORT_MS), one log line each;
2. the sweep, with the web as the first of `--servers`: `--rounds` rounds; in each, every
   concurrency level, and at each level every mode for `--duration / --rounds` seconds after
   `--warmup`; the mode order rotates each round so no mode always runs first or right after
   another (drift and after-effects hit all alike); after a queued slice the run waits until
   the sinks have every message (the delivery lag), the consumers have recorded every job and
   the relay has published the events those records wrote (so the CPU spent on that slice's
   jobs is inside its sample); every slice starts with the work queues and the outbox empty;
3. the extras on that server: the paced lag probe, noop and insert-only paced the same way,
   queued with the consumers paused, each mode at c=1 without TCP_NODELAY (python wsgi.py
   only), the burst (bench/burst.py);
4. the same sweep again with the web as each other server of `--servers` (by default the
   Procfile's gunicorn line, 2 gevent workers);
5. the Celery peer (bench/peer.py), at the sink delay and at 0 ms.

This module is the orchestration: the options, the session every part runs on, the run itself.
The measured parts are in bench/parts.py (and burst.py, peer.py); turning their slices into
results is bench/aggregate.py, which report, charts and targets read with `find_point`.
"""

from __future__ import annotations

import os
import platform
import random
import secrets
import shutil
import sqlite3
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from sqlalchemy import func, select

from app.bench_results import SCHEMA
from app.config import Settings, load_settings
from app.db import make_engine
from app.events import REQUEST_HOLDER
from app.models import Event, Notification
from bench import cpu
from bench.aggregate import (
    MODES,
    SERVERS,
    Slice,
    aggregate,
    find_point,
    ratios,
    slice_windows,
)
from bench.driver import LoadGenerator
from bench.parts import (
    run_lag_probe,
    run_paced_baselines,
    run_sweep,
    run_with_consumers_paused,
    run_without_nodelay,
)
from bench.protocol import NOOP, LoadResult, LoadSpec
from bench.queues import QueueDepthPoller
from bench.sinkwatch import RecordTail, wait_for_all
from bench.stalls import LogLineCounter
from bench.users import UserFactory, capacity

TEXTBOOK: dict[str, dict[str, float]] = {
    "serial": {"ms": 150.0, "rps": 7.0},
    "parallel": {"ms": 100.0, "rps": 10.0},
    "queued": {"ms": 50.0, "rps": 20.0},
}
IDLE_TIMEOUT = 60.0  # waiting for the queues and the outbox to empty before the next part
RECORD_TIMEOUT = 15.0  # waiting for the consumers to record the jobs the sinks already have, and
# then for the relay to publish the events those records wrote

Progress = Callable[[str], None]


@dataclass(frozen=True)
class BenchOptions:
    concurrency: tuple[int, ...] = (1, 10, 50)
    duration: float = 6.0  # measured seconds per mode and level, split over the rounds
    rounds: int = 3
    warmup: float = 0.5  # seconds before each slice's measurement
    delay_ms: float = 50.0
    # The production default (CONSUMER_CONCURRENCY); the Celery worker gets the same.
    consumer_concurrency: int = Settings().consumer_concurrency
    modes: tuple[str, ...] = MODES
    nodelay: bool = True  # False: the whole run without TCP_NODELAY on the server
    nagle_duration: float = 3.0  # per mode at concurrency 1 without TCP_NODELAY; 0 skips
    diagnostics_duration: float = 3.0  # each paced or consumers-paused slice; 0 skips
    lag_rate: float | None = None  # the paced parts' pace; None: parallel mode's c=1 rate
    burst_requests: int = 2000  # 0 skips
    burst_concurrency: int = 100
    peer_jobs: int = 1000  # per side; 0 skips
    servers: tuple[str, ...] = ("wsgi", "gunicorn")  # the sweep runs once on each, in order
    hub_block_ms: float = 20.0  # the web logs every event-loop stall longer; 0: not counted
    out: Path = Path("bench-results")
    run_dir: Path = Path(".run/bench")
    command: str = "python -m bench"
    cluster: bool = False  # on make cluster's shape (bench/cluster_shape.py)


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
        # Stack.start() starts `python wsgi.py`; the cluster's stack says it runs gunicorn.
        self.server: str = getattr(stack, "server", "wsgi")
        self.stalls = LogLineCounter(stack.log_dir / "web.log")
        self.engine = make_engine(stack.database_url)

    def close(self) -> None:
        self.engine.dispose()

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
        stalls_before = self.stalls.count()
        relayed_before = self.relayed_count()
        before = self.cpu_sample()
        web = self.cpu_parts()["web"]
        web_before = cpu.sched_sample(web, time.monotonic())
        result = self.load(spec)
        web_after = cpu.sched_sample(web, time.monotonic())
        during_load = cpu.difference(before, self.cpu_sample())
        expected_status = 200 if mode == NOOP else 201
        measured = result.measured()
        ok = [i for i in measured if result.status[i] == expected_status]
        piece = Slice(mode, concurrency, bool(self.stack.config.tcp_nodelay), result, measured, ok)
        piece.server = self.server
        piece.web_sched = cpu.sched_difference(web_before, web_after)
        piece.cpu_load = during_load
        if mode == "queued" and deliver:
            self.measure_delivery(piece, expected_status)
            self.wait_recorded()
            self.wait_published()
        piece.cpu = cpu.difference(before, self.cpu_sample())
        piece.relayed = self.relayed_count() - relayed_before
        if self.options.hub_block_ms > 0:
            piece.stalls = self.stalls.count() - stalls_before
        return piece

    def relayed_count(self) -> int:
        """Queued registrations the outbox relay published instead of their request, so far.

        Two traces: a row the relay published as a job keeps its `claimed_by` (the request path
        never writes it), and a registration's event the relay took over carries the relay's id
        where the request's own publish leaves REQUEST_HOLDER. The relay also publishes, as it
        should, the events of inline-sending registrations, released to it once their sends
        were recorded: their rows were sent inline and never queued, which tells them apart.
        """
        jobs = (
            select(func.count())
            .select_from(Notification)
            .where(Notification.claimed_by.is_not(None))
        )
        events = (
            select(func.count(func.distinct(Event.id)))
            .select_from(Event)
            .join(Notification, Notification.event_id == Event.id)
            .where(
                Event.claimed_by.is_not(None),
                Event.claimed_by != REQUEST_HOLDER,
                Notification.queued_at.is_not(None),
            )
        )
        with self.engine.connect() as connection:
            return int(connection.execute(jobs).scalar_one()) + int(
                connection.execute(events).scalar_one()
            )

    def wait_recorded(self, timeout: float = RECORD_TIMEOUT) -> int:
        """Until no notification is left pending or queued (bounded); return how many are.

        The sinks have a message before its consumer records the send and acks: waiting for the
        ledger as well puts the CPU of every job a queued slice caused inside its sample.
        """
        return self._wait_for_none(self.unrecorded_jobs, timeout, "jobs not recorded")

    def unrecorded_jobs(self) -> int:
        """Notifications no send has been recorded for yet (pending or queued)."""
        return self._count(
            select(func.count())
            .select_from(Notification)
            .where(Notification.status.in_(("pending", "queued")))
        )

    def unpublished_events(self) -> int:
        """Events the outbox still holds for the relay to publish."""
        return self._count(select(func.count()).select_from(Event).where(Event.status == "pending"))

    def _count(self, query: Any) -> int:
        with self.engine.connect() as connection:
            return int(connection.execute(query).scalar_one())

    def _wait_for_none(self, count: Callable[[], int], timeout: float, what: str) -> int:
        """Until `count()` is 0, or `timeout` seconds, when a warning says how many `what`."""
        deadline = time.monotonic() + timeout
        while True:
            left = count()
            if not left:
                return 0
            if time.monotonic() >= deadline:
                self.progress(f"warning: {left} {what} after {timeout:.0f}s")
                return left
            time.sleep(0.05)

    def wait_published(self, timeout: float = RECORD_TIMEOUT) -> int:
        """Until the relay has published every event in the outbox (bounded); return how many
        are left.

        Each recorded send writes a `notification.sent` event, so when a queued slice's jobs are
        all recorded the relay still has hundreds to publish (250-1,070 after a 2-s c=50 slice
        on a stack of its own, gone 0.4-0.8 s later). Waiting for them puts the relay's and the
        broker's part inside the queued slice's CPU sample, and out of the next slice.
        """
        return self._wait_for_none(self.unpublished_events, timeout, "events not published")

    def cpu_parts(self) -> dict[str, list[int]]:
        processes = self.stack.processes

        def pids(*kinds: str) -> list[int]:  # "email", or on the cluster "email-1", "email-2"
            return [p.pid for name, p in processes.items() if name.split("-")[0] in kinds]

        nodes = getattr(self.stack, "nodes", [self.stack.node])
        parts = {
            "web": pids("web"),
            "consumers": pids("email", "sms"),
            "relay": pids("relay"),
            "sinks": [sink.process.pid for sink in self.stack.sinks.values()],
            "rabbitmq": [pid for node in nodes if node and (pid := node.pid())],
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
        """Until both work queues and the outbox are empty (bounded): leftovers would load the
        next part. (The outbox: the events of an inline mode's registrations, released to the
        relay once their sends are recorded, and those of a part that did not wait for them.)"""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            latest = self.poller.latest()
            if latest and not any(latest.values()) and not self.unpublished_events():
                return
            time.sleep(0.1)
        self.progress(
            f"warning: not idle after {timeout:.0f}s: queues {self.poller.latest()}, "
            f"{self.unpublished_events()} events not published"
        )

    # -- the web server: its shape, and with or without TCP_NODELAY -------------------------

    def restart_web(self, *, nodelay: bool) -> None:
        """`python wsgi.py` again, with or without TCP_NODELAY."""
        self.stack.stop_process("web")
        self.stack.config.tcp_nodelay = nodelay
        self.stack.start_web()
        self.server = "wsgi"

    def use_server(self, server: str) -> None:
        """Serve with `server` (a key of SERVERS) from now on; the stack's web is replaced."""
        if server == self.server:
            return
        if server == "wsgi":
            self.restart_web(nodelay=self.options.nodelay)
            return
        self.stack.stop_process("web")
        # The Procfile's web line, with the stack's environment (HOST, PORT, WEB_WORKERS...).
        gunicorn = str(Path(sys.executable).parent / "gunicorn")
        self.stack.spawn("web", [gunicorn, "--config", "gunicorn.conf.py", "wsgi:app"])
        self.stack.wait_until_ready()
        # /readyz was answered by one worker; give the others time to connect to the broker.
        time.sleep(1.0)
        self.server = server

    def elapsed(self) -> str:
        seconds = int(time.monotonic() - self.started)
        return f"{seconds // 60}:{seconds % 60:02d}"


def depth_series(session: BenchSession, since: float, until: float) -> dict[str, Any]:
    samples = session.poller.snapshot().between(since, until)
    # Every other sample is plenty for the chart and halves the JSON.
    return {
        "t": [round(t - since, 2) for t in samples.t[::2]],
        "email": samples.depth["email"][::2],
        "sms": samples.depth["sms"][::2],
    }


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
            # One log line per event-loop stall longer than this (only the web reads it).
            "HUB_BLOCK_REPORT_MS": f"{options.hub_block_ms:g}",
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
    stack: Any = Stack(stack_config(options))
    if options.cluster:
        from bench.cluster_shape import cluster_bench_stack

        stack = cluster_bench_stack(options.run_dir, options.delay_ms, options.consumer_concurrency)
    primary, *others = options.servers
    sweeps: dict[str, list[Slice]] = {}
    with stack:
        progress(f"stack ready in {time.monotonic() - began:.1f}s at {stack.base_url}")
        poller = QueueDepthPoller(stack.amqp_url).start()
        session: BenchSession | None = None
        try:
            with LoadGenerator(stack.log_dir / "loadgen.log") as loadgen:
                session = BenchSession(stack, loadgen, poller, options, progress)
                session.use_server(primary)
                progress(f"sweep with the web as {SERVERS[primary]}")
                sweep_from = time.time()
                sweeps[primary] = run_sweep(session)
                sweep_until = time.time()
                points = aggregate(sweeps[primary])
                parallel = find_point(points, "parallel", 1)
                lag_probe = run_lag_probe(session, parallel["rps"] if parallel else None)
                paced = run_paced_baselines(session, parallel["rps"] if parallel else None)
                paused = run_with_consumers_paused(session)
                nagle = run_without_nodelay(session) if primary == "wsgi" else []
                burst = (
                    run_burst(session, options.burst_requests, options.burst_concurrency)
                    if options.burst_requests > 0
                    else None
                )
                for server in others:
                    progress(f"sweep with the web as {SERVERS[server]}")
                    session.use_server(server)
                    sweeps[server] = run_sweep(session)
            assert session is not None
            peer = run_peer(session, options.peer_jobs) if options.peer_jobs > 0 else None
        finally:
            poller.stop()
            if session is not None:
                session.close()
        queue_depth = depth_series(session, sweep_from, sweep_until)
        windows = slice_windows(sweeps[primary], sweep_from)
        web_workers = int(load_settings(stack.environment()).web_workers)

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
            "hub_block_ms": options.hub_block_ms,
            "server": primary,
            "servers": list(options.servers),
        },
        "textbook": TEXTBOOK,
        # The first server's sweep: what /compare, the charts and the extras' targets read.
        "points": points,
        "ratios": ratios(points, options.concurrency),
        # Each other server's sweep, apart (every point also names its server).
        "other_servers": [
            {
                "server": server,
                "label": SERVERS[server],
                "workers": web_workers if server == "gunicorn" else 1,
                "points": (other := aggregate(sweeps[server])),
                "ratios": ratios(other, options.concurrency),
            }
            for server in others
        ],
        "nagle": aggregate(nagle),
        "lag_probe": lag_probe,
        "paced_baselines": paced,
        "consumers_paused": paused,
        "queue_depth": queue_depth,
        "slices": windows,
        "burst": burst,
        "peer": peer,
    }
