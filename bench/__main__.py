"""`python -m bench` (what `make bench` runs): the timing comparison, end to end.

    python -m bench                                    # the default run, a few minutes
    python -m bench --concurrency 1,10 --duration 2    # shorter
    python -m bench --report bench-results/results.json  # re-print and redraw, no run
    python -m bench --servers wsgi                     # only `python wsgi.py`, not gunicorn too
    python -m bench --flame docs/                      # py-spy flame graphs, no run

Progress goes to stderr, one line per finished slice; the table to stdout; results.json and the
PNG charts to --out. docs/benchmark.md explains every figure.
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

from app.bench_results import RESULTS_FILE
from bench.aggregate import MODES, SERVERS
from bench.runner import BenchOptions


def _levels(raw: str) -> tuple[int, ...]:
    try:
        levels = tuple(int(part) for part in raw.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"not a comma-separated list of numbers: {raw!r}"
        ) from None
    if not levels or min(levels) < 1:
        raise argparse.ArgumentTypeError("concurrency levels must be whole numbers of at least 1")
    return levels


def _modes(raw: str) -> tuple[str, ...]:
    modes = tuple(part.strip() for part in raw.split(",") if part.strip())
    unknown = [mode for mode in modes if mode not in MODES]
    if unknown or not modes:
        raise argparse.ArgumentTypeError(f"modes are {', '.join(MODES)}; not {unknown or raw!r}")
    return tuple(mode for mode in MODES if mode in modes)


def _servers(raw: str) -> tuple[str, ...]:
    servers = tuple(dict.fromkeys(part.strip() for part in raw.split(",") if part.strip()))
    unknown = [server for server in servers if server not in SERVERS]
    if unknown or not servers:
        raise argparse.ArgumentTypeError(
            f"servers are {', '.join(SERVERS)}; not {unknown or raw!r}"
        )
    return servers


def _positive(raw: str) -> float:
    value = float(raw)
    if not value > 0 or math.isinf(value):
        raise argparse.ArgumentTypeError(f"must be a positive number: {raw!r}")
    return value


def _non_negative(raw: str) -> float:
    value = float(raw)
    if not value >= 0 or math.isinf(value):
        raise argparse.ArgumentTypeError(f"must be zero or more: {raw!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    d = BenchOptions()
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="Serial, parallel and queued registration, measured side by side.",
    )
    parser.add_argument(
        "--concurrency",
        type=_levels,
        default=d.concurrency,
        help="comma-separated client counts (default 1,10,50)",
    )
    parser.add_argument(
        "--duration",
        type=_positive,
        default=d.duration,
        help=f"measured seconds per mode and level, split over the rounds (default {d.duration:g})",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=d.rounds,
        help=f"alternating rounds over all modes and levels (default {d.rounds})",
    )
    parser.add_argument(
        "--warmup",
        type=_non_negative,
        default=d.warmup,
        help=f"unmeasured seconds before each slice (default {d.warmup:g})",
    )
    parser.add_argument(
        "--modes", type=_modes, default=d.modes, help=f"subset of {','.join(MODES)} (default all)"
    )
    parser.add_argument(
        "--delay-ms",
        type=_non_negative,
        default=d.delay_ms,
        help=f"SMTP and SMS sink delay, each (default {d.delay_ms:g})",
    )
    parser.add_argument(
        "--consumer-concurrency",
        type=int,
        default=d.consumer_concurrency,
        help=f"sends at once per consumer, and for the Celery worker "
        f"(default {d.consumer_concurrency})",
    )
    parser.add_argument(
        "--no-nodelay",
        action="store_true",
        help="run the whole sweep with the server's TCP_NODELAY off (shows the "
        "delayed-ACK stall everywhere; skips the separate comparison)",
    )
    parser.add_argument(
        "--nagle-duration",
        type=_non_negative,
        default=d.nagle_duration,
        help=f"seconds per mode at c=1 with the server restarted without "
        f"TCP_NODELAY; 0 skips (default {d.nagle_duration:g})",
    )
    parser.add_argument(
        "--diagnostics-duration",
        type=_non_negative,
        default=d.diagnostics_duration,
        help=f"seconds for the paced delivery-lag probe, each paced baseline and each "
        f"consumers-paused slice; 0 skips them (default {d.diagnostics_duration:g})",
    )
    parser.add_argument(
        "--lag-rate",
        type=_positive,
        default=None,
        help="pace of the delivery-lag probe and the paced baselines in requests a second "
        "(default: the rate parallel mode reached at one client)",
    )
    parser.add_argument(
        "--burst",
        type=int,
        default=d.burst_requests,
        metavar="N",
        help=f"queued registrations in the burst; 0 skips (default {d.burst_requests})",
    )
    parser.add_argument(
        "--burst-concurrency",
        type=int,
        default=d.burst_concurrency,
        help=f"clients sending the burst (default {d.burst_concurrency})",
    )
    parser.add_argument(
        "--peer-jobs",
        type=int,
        default=d.peer_jobs,
        metavar="N",
        help=f"email jobs per side for the Celery comparison; 0 skips (default {d.peer_jobs})",
    )
    parser.add_argument(
        "--dispatch-jobs",
        type=int,
        default=200,
        metavar="N",
        help="jobs per cell of the round-robin / fair-dispatch part (bench.dispatch, its own "
        "brokers); 0 skips it and the consumer-scaling part (default 200)",
    )
    parser.add_argument(
        "--servers",
        type=_servers,
        default=d.servers,
        help="the web shapes to sweep, in order: wsgi (python wsgi.py), gunicorn (the "
        "Procfile's line); the extras run on the first (default wsgi,gunicorn)",
    )
    parser.add_argument(
        "--hub-block-ms",
        type=_non_negative,
        default=d.hub_block_ms,
        help=f"count the web's event-loop stalls longer than this (HUB_BLOCK_REPORT_MS); "
        f"0 does not count (default {d.hub_block_ms:g})",
    )
    parser.add_argument(
        "--flame",
        type=Path,
        metavar="DIR",
        help="instead of a run: py-spy flame graphs of the web and the email consumer under "
        "queued load at the highest --concurrency, written to DIR/flame-web.svg and "
        "DIR/flame-consumer-email.svg",
    )
    parser.add_argument(
        "--flame-duration",
        type=_positive,
        default=15.0,
        help="seconds py-spy records for --flame (default 15)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=d.out,
        help=f"folder for results.json and the charts (default {d.out})",
    )
    parser.add_argument(
        "--run-dir",
        type=Path,
        default=d.run_dir,
        help=f"folder for the stack's node, database, sinks and logs; a previous run's is "
        f"emptied first (default {d.run_dir})",
    )
    parser.add_argument(
        "--cluster",
        action="store_true",
        help="run on make cluster's shape (gunicorn x2 on PostgreSQL, 3 RabbitMQ nodes with "
        "quorum queues, 2+2 consumers); results in OUT/cluster",
    )
    parser.add_argument(
        "--report",
        type=Path,
        metavar="RESULTS_JSON",
        help="print the table and redraw the charts from an earlier run's "
        "results.json; runs nothing",
    )
    return parser


def progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def finish(results: dict[str, Any], out: Path) -> str:
    """Judge the targets, draw the charts, write results.json; return the report text."""
    from bench.charts import draw_all
    from bench.report import render
    from bench.targets import evaluate

    results["targets"] = evaluate(results)
    results["charts"] = draw_all(results, out)
    text = render(results, results["targets"])
    results["report"] = text
    out.mkdir(parents=True, exist_ok=True)
    path = out / RESULTS_FILE
    temporary = path.with_suffix(".json.tmp")
    # allow_nan=False: a figure that could not be measured must already be null, not NaN.
    temporary.write_text(json.dumps(results, indent=1, allow_nan=False) + "\n")
    temporary.replace(path)  # /compare never reads a half-written file
    return text


def cluster_options(options: BenchOptions) -> BenchOptions:
    """--cluster: the same comparison on make cluster's shape. Its results go to a folder of
    their own; the Nagle part (python wsgi.py without TCP_NODELAY) and the Celery peer (a
    single node) do not apply to it."""
    return replace(
        options,
        cluster=True,
        servers=("gunicorn",),  # the Procfile's web line, as the cluster runs it
        nagle_duration=0,
        peer_jobs=0,
        out=options.out / "cluster",
        run_dir=options.run_dir.with_name(options.run_dir.name + "-cluster"),
    )


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.report:
        results = json.loads(args.report.read_text())
        print(finish(results, args.report.parent))
        return 0
    if args.rounds < 1 or args.consumer_concurrency < 1 or args.burst_concurrency < 1:
        print(
            "error: --rounds, --consumer-concurrency and --burst-concurrency must be >= 1",
            file=sys.stderr,
        )
        return 2
    options = BenchOptions(
        concurrency=args.concurrency,
        duration=args.duration,
        rounds=args.rounds,
        warmup=args.warmup,
        delay_ms=args.delay_ms,
        consumer_concurrency=args.consumer_concurrency,
        modes=args.modes,
        nodelay=not args.no_nodelay,
        nagle_duration=args.nagle_duration,
        diagnostics_duration=args.diagnostics_duration,
        lag_rate=args.lag_rate,
        burst_requests=max(args.burst, 0),
        burst_concurrency=args.burst_concurrency,
        peer_jobs=max(args.peer_jobs, 0),
        servers=args.servers,
        hub_block_ms=args.hub_block_ms,
        out=args.out,
        run_dir=args.run_dir,
        command=shlex.join(["python", "-m", "bench", *(sys.argv[1:] if argv is None else argv)]),
    )
    if args.cluster:
        options = cluster_options(options)
    from bench.flame import FlameError, record_flame_graphs
    from bench.runner import RunDirError, run_bench
    from devstack.broker_node import BrokerNodeError
    from devstack.cluster import ClusterError
    from devstack.postgres import PostgresError
    from devstack.stack import StackError

    if args.flame:
        try:
            written = record_flame_graphs(options, args.flame, args.flame_duration, progress)
        except (BrokerNodeError, StackError, RunDirError, FlameError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        print("flame graphs: " + ", ".join(str(path) for path in written))
        return 0
    try:
        results = run_bench(options, progress)
        if args.dispatch_jobs > 0:
            from bench.dispatch import run_dispatch

            progress("dispatch: round-robin against fair dispatch, then consumer scaling")
            results["dispatch"] = run_dispatch(
                options.run_dir / "dispatch", args.dispatch_jobs, scaling_jobs=1500
            )
    except (BrokerNodeError, StackError, RunDirError, ClusterError, PostgresError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted; every process the bench started has been stopped", file=sys.stderr)
        return 130
    text = finish(results, options.out)
    print(text)
    print(
        f"\nresults: {options.out / RESULTS_FILE}; charts: "
        f"{', '.join(str(options.out / c['file']) for c in results['charts'])}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
