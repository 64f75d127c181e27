"""How RabbitMQ shares one queue among consumers, measured with the real consumer processes.

Two parts, each on its own private broker, SMTP sink and database:

fair dispatch  1, 2 and 4 email consumers, one send at a time each, on jobs of uneven cost: one
               job in five (chosen at random, seeded) goes to a recipient the sink answers ten
               times slower. With a large prefetch the broker hands messages out round-robin as
               they arrive, whatever each consumer is busy with; with prefetch 1 a consumer
               gets its next job only when it acked the last (the seeds' `basic_qos(
               prefetch_count=1)`). Strictly every fifth job would land evenly on 2 or 4
               round-robin consumers and hide exactly what this shows, hence the random choice.
scaling        drain rate against consumer processes x sends in flight per process, with every
               job equally slow (the sink's delay).

Per consumer it reports the jobs it took (its `offload_jobs_total`) and its idle time (the drain
time less the time it spent sending, from `offload_job_seconds`, per send slot).

`make bench` runs both (`--dispatch-jobs 0` skips them); on their own:

    python -m bench.dispatch [--jobs 200] [--out bench-results]
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pika
import pika.exceptions

from app.config import Settings
from app.db import make_engine, make_session_factory, session_scope
from app.jobs import Job, job_from_dict, work_queue
from app.messaging import PikaPublisher
from app.migrate import upgrade
from app.registration import Registration, register_user
from app.topology import connection_parameters
from bench.sinkwatch import RecordTail
from bench.users import UserFactory
from devstack.ports import free_port
from devstack.sinks.process import start_sink_process
from devstack.stack import Stack, StackConfig

SLOW_PREFIX = "slow-"
SLOW_FACTOR = 10.0
SLOW_SHARE = 0.2
FAIR_DELAY_MS = 20.0
SCALING_DELAY_MS = 50.0
PROCESSES = (1, 2, 4)
PREFETCHES = (1, 100)
CONCURRENCIES = (1, 10, 50)
DRAIN_TIMEOUT = 120.0


@dataclass
class ConsumerFigures:
    jobs: int
    busy_s: float
    idle_s: float


class DispatchLab:
    """One private broker, SMTP sink and database; consumers started and stopped per cell."""

    def __init__(self, run_dir: Path, delay_ms: float, *, slow: bool) -> None:
        self.stack = Stack(StackConfig.on_free_ports(run_dir, workers=(), sink_delay_ms=delay_ms))
        self.delay_ms = delay_ms
        self.slow = slow
        self.rng = random.Random(7)
        self.users = UserFactory(nonce="dispatch")
        self.next_user = 0
        self.tail: RecordTail | None = None
        self.publisher: PikaPublisher | None = None

    def __enter__(self) -> DispatchLab:
        stack = self.stack
        stack.log_dir.mkdir(parents=True, exist_ok=True)
        stack.start_broker()
        record = stack.run_dir / "sinks" / "smtp.jsonl"
        record.parent.mkdir(parents=True, exist_ok=True)
        record.unlink(missing_ok=True)
        stack.sinks["smtp"] = start_sink_process(
            "smtp",
            stack.config.smtp_port,
            record,
            delay_ms=self.delay_ms,
            slow_prefix=SLOW_PREFIX if self.slow else "",
            slow_factor=SLOW_FACTOR,
        )
        upgrade(stack.database_url)
        self.sessions = make_session_factory(make_engine(stack.database_url))
        self.settings = Settings(database_url=stack.database_url)
        self.tail = RecordTail(record)
        self.publisher = PikaPublisher(stack.amqp_url, name="offload-bench-dispatch")
        return self

    def __exit__(self, *_exc: object) -> None:
        if self.publisher is not None:
            self.publisher.close()
        self.stack.stop()

    def email_jobs(self, count: int) -> list[Job]:
        """Real users and notification rows (queued, as after a publish), one email job each."""
        jobs: list[Job] = []
        with session_scope(self.sessions) as db:
            for _ in range(count):
                index = self.next_user
                self.next_user += 1
                slow = self.slow and self.rng.random() < SLOW_SHARE
                email = f"{SLOW_PREFIX if slow else 'even-'}{self.users.email(index)}"
                registered = register_user(
                    db,
                    self.settings,
                    Registration(
                        name=f"Dispatch {index}", email=email, phone=self.users.phone(index)
                    ),
                    initial_status="queued",
                )
                jobs.extend(
                    job_from_dict(n.payload)
                    for n in registered.notifications
                    if n.channel == "email"
                )
        return jobs

    def run_cell(
        self, processes: int, concurrency: int, prefetch: int, jobs: int
    ) -> dict[str, Any]:
        assert self.tail is not None and self.publisher is not None
        work = self.email_jobs(jobs)
        ports = distinct_free_ports(processes)
        names = [f"email-{processes}x{concurrency}-p{prefetch}-{i}" for i in range(processes)]
        for name, port in zip(names, ports, strict=True):
            self.stack.start_worker(
                "email",
                name=name,
                extra_env={
                    "CONSUMER_CONCURRENCY": str(concurrency),
                    "CONSUMER_PREFETCH": str(prefetch),
                    "METRICS_PORT": str(port),
                    "LOG_LEVEL": "WARNING",
                },
            )
        try:
            # "started" is printed before a consumer subscribes: wait until all have, or the
            # first would be handed everything.
            self.wait_for_consumers(processes)
            self.tail.poll()
            before = self.tail.count
            started = time.time()
            self.publisher.publish(work, timeout=60)
            deadline = time.monotonic() + DRAIN_TIMEOUT
            while self.tail.count - before < jobs and time.monotonic() < deadline:
                time.sleep(0.02)
                self.tail.poll()
            drained = time.time() - started
            # The sink has a message before its consumer records the send and counts it.
            counted_by = time.monotonic() + 10
            figures = [scrape(port) for port in ports]
            while sum(f.jobs for f in figures) < jobs and time.monotonic() < counted_by:
                time.sleep(0.05)
                figures = [scrape(port) for port in ports]
        finally:
            for name in names:
                self.stack.stop_process(name)
        delivered = self.tail.count - before
        return {
            "processes": processes,
            "concurrency": concurrency,
            "prefetch": prefetch,
            "jobs": jobs,
            "delivered": delivered,
            "drain_s": drained,
            "rate": delivered / drained if drained > 0 else None,
            "consumers": [
                {
                    "jobs": f.jobs,
                    "busy_s": f.busy_s / concurrency,
                    "idle_s": max(0.0, drained - f.busy_s / concurrency),
                }
                for f in figures
            ],
        }

    def wait_for_consumers(self, count: int, timeout: float = 30.0) -> None:
        connection = pika.BlockingConnection(connection_parameters(self.stack.amqp_url))
        try:
            deadline = time.monotonic() + timeout
            subscribed = 0
            while True:
                try:
                    # A fresh channel each time: a passive declare of a queue no consumer has
                    # declared yet closes its channel (404).
                    channel = connection.channel()
                    declared = channel.queue_declare(work_queue("email"), passive=True)
                    subscribed = declared.method.consumer_count
                    channel.close()
                except pika.exceptions.ChannelClosedByBroker:
                    subscribed = 0
                if subscribed >= count:
                    return
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        f"only {declared.method.consumer_count} of {count} consumers subscribed"
                    )
                time.sleep(0.05)
        finally:
            connection.close()


def distinct_free_ports(count: int) -> list[int]:
    # free_port() closes its socket before returning, so two calls in a row may return the
    # same port.
    ports: list[int] = []
    while len(ports) < count:
        port = free_port()
        if port not in ports:
            ports.append(port)
    return ports


def scrape(port: int) -> ConsumerFigures:
    """The consumer's own count of jobs sent and the seconds it spent sending them."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    jobs, busy = 0.0, 0.0
    for line in text.splitlines():
        if line.startswith("offload_jobs_total{") and 'outcome="sent"' in line:
            jobs += float(line.rsplit(" ", 1)[1])
        elif line.startswith("offload_job_seconds_sum{"):
            busy += float(line.rsplit(" ", 1)[1])
    return ConsumerFigures(int(jobs), busy, 0.0)


def run_fair_dispatch(
    run_dir: Path, jobs: int, processes_tried: tuple[int, ...] = PROCESSES
) -> list[dict[str, Any]]:
    cells = []
    with DispatchLab(run_dir / "fair", FAIR_DELAY_MS, slow=True) as lab:
        for processes in processes_tried:
            for prefetch in PREFETCHES:
                cell = lab.run_cell(processes, 1, prefetch, jobs)
                print(describe_fair(cell), flush=True)
                cells.append(cell)
    return cells


def run_scaling(
    run_dir: Path,
    max_jobs: int,
    processes_tried: tuple[int, ...] = PROCESSES,
    concurrencies: tuple[int, ...] = CONCURRENCIES,
) -> list[dict[str, Any]]:
    cells = []
    with DispatchLab(run_dir / "scaling", SCALING_DELAY_MS, slow=False) as lab:
        for processes in processes_tried:
            for concurrency in concurrencies:
                # About two seconds of work at the rate the sends in flight allow, within bounds.
                ideal_rate = processes * concurrency / (SCALING_DELAY_MS / 1000)
                jobs = int(min(max_jobs, max(60, ideal_rate * 2)))
                cell = lab.run_cell(processes, concurrency, max(100, 2 * concurrency), jobs)
                print(
                    f"  scaling  {processes} x {concurrency:>2}: {cell['rate']:7.0f} jobs/s "
                    f"({cell['delivered']} in {cell['drain_s']:.2f} s)",
                    flush=True,
                )
                cells.append(cell)
    return cells


def describe_fair(cell: dict[str, Any]) -> str:
    takes = ", ".join(f"{c['jobs']} jobs/{c['idle_s']:.1f} s idle" for c in cell["consumers"])
    return (
        f"  fair     {cell['processes']} consumer(s), prefetch {cell['prefetch']:>3}: "
        f"drained {cell['delivered']} in {cell['drain_s']:.2f} s  [{takes}]"
    )


def draw(results: dict[str, Any], out: Path) -> list[dict[str, Any]]:
    """The fair-dispatch and scaling charts (their entries for results.json and /compare)."""
    import matplotlib.pyplot as plt

    from bench.charts import save_chart  # also selects the file-only backend

    charts = []
    fair = results.get("fair_dispatch") or []
    if fair:
        figure, (jobs_ax, drain_ax) = plt.subplots(1, 2, figsize=(11, 5))
        labels, takes, idles = [], [], []
        for cell in fair:
            for index, consumer in enumerate(cell["consumers"]):
                labels.append(
                    f"{cell['processes']} cons., prefetch {cell['prefetch']}: #{index + 1}"
                )
                takes.append(consumer["jobs"])
                idles.append(consumer["idle_s"])
        positions = list(range(len(labels)))
        jobs_ax.bar(positions, takes, color="#4c72b0")
        idle_ax = jobs_ax.twinx()
        idle_ax.plot(positions, idles, "o", color="#c44e52")
        jobs_ax.set_xticks(positions, labels, fontsize=7, rotation=90)
        jobs_ax.set_ylabel("jobs taken (bars)")
        idle_ax.set_ylabel("idle seconds (dots)")
        jobs_ax.set_title("each consumer: jobs taken and time idle")
        for prefetch, colour in zip(PREFETCHES, ("#55a868", "#8172b2"), strict=True):
            cells = [c for c in fair if c["prefetch"] == prefetch]
            drain_ax.plot(
                [c["processes"] for c in cells],
                [c["drain_s"] for c in cells],
                "o-",
                color=colour,
                label=f"prefetch {prefetch}",
            )
        drain_ax.set_xlabel("consumer processes (one send at a time each)")
        drain_ax.set_ylabel("drain time (s)")
        drain_ax.set_title("uneven jobs: 1 in 5 ten times slower")
        drain_ax.legend()
        charts.append(
            save_chart(
                figure,
                out,
                "dispatch.png",
                "Round-robin and fair dispatch",
                "Jobs taken and idle time per consumer, and drain time, for 1, 2 and 4 consumers "
                "at prefetch 1 and 100, on jobs of uneven cost.",
            )
        )
    scaling = results.get("scaling") or []
    if scaling:
        figure, ax = plt.subplots(figsize=(6, 4))
        for concurrency in sorted({c["concurrency"] for c in scaling}):
            cells = [c for c in scaling if c["concurrency"] == concurrency]
            ax.plot(
                [c["processes"] for c in cells],
                [c["rate"] for c in cells],
                "o-",
                label=f"{concurrency} sends in flight each",
            )
        ax.set_xlabel("consumer processes")
        ax.set_ylabel("jobs drained per second")
        ax.set_title(f"scaling consumers ({SCALING_DELAY_MS:g} ms per send)")
        ax.legend()
        charts.append(
            save_chart(
                figure,
                out,
                "scaling.png",
                "Scaling consumers",
                "Jobs drained per second against consumer processes, for 1, 10 and 50 sends in "
                "flight per process.",
            )
        )
    return charts


def run_dispatch(run_dir: Path, jobs: int, scaling_jobs: int) -> dict[str, Any]:
    """Both parts (the `make bench` part; `jobs` per fair-dispatch cell)."""
    return {
        "fair_dispatch": run_fair_dispatch(run_dir, jobs),
        "scaling": run_scaling(run_dir, scaling_jobs) if scaling_jobs else [],
        "slow_share": SLOW_SHARE,
        "slow_factor": SLOW_FACTOR,
        "fair_delay_ms": FAIR_DELAY_MS,
        "scaling_delay_ms": SCALING_DELAY_MS,
    }


def report_lines(dispatch: dict[str, Any]) -> list[str]:
    lines = [
        "",
        f"dispatch: one email queue, consumers sending one job at a time; one job in "
        f"{round(1 / dispatch['slow_share'])} takes {dispatch['slow_factor']:g} x "
        f"{dispatch['fair_delay_ms']:g} ms",
    ]
    lines += [describe_fair(cell) for cell in dispatch["fair_dispatch"]]
    if dispatch["scaling"]:
        lines.append(
            f"scaling: jobs drained per second ({dispatch['scaling_delay_ms']:g} ms per send), "
            "processes x sends in flight each"
        )
        lines += [
            f"  {c['processes']} x {c['concurrency']:>2}: {c['rate']:7.0f} jobs/s"
            for c in dispatch["scaling"]
        ]
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.dispatch", description=__doc__)
    parser.add_argument("--jobs", type=int, default=200, help="jobs per fair-dispatch cell")
    parser.add_argument("--scaling-jobs", type=int, default=1500, help="most jobs per scaling cell")
    parser.add_argument(
        "--out", default="bench-results", help="folder for dispatch.json and charts"
    )
    parser.add_argument("--run-dir", default=".run/bench-dispatch", help="brokers, sinks, logs")
    parser.add_argument("--skip-scaling", action="store_true")
    args = parser.parse_args(argv)
    run_dir, out = Path(args.run_dir), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = run_dispatch(run_dir, args.jobs, 0 if args.skip_scaling else args.scaling_jobs)
    (out / "dispatch.json").write_text(json.dumps(results, indent=2))
    charts = draw(results, out)
    print("\n".join(report_lines(results)))
    print(f"results: {out / 'dispatch.json'}; charts: {', '.join(c['file'] for c in charts)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
