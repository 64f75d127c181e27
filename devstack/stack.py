"""The whole demo stack as child processes: broker node, sinks, web, consumers, relay.

`make run` uses it in the foreground; the integration tests, the fault tests and the benchmark
use it from code, on free ports and their own folders, so they can run while `make run` is up.
Every process is ours: we start it, we stop it by its PID (SIGTERM, then SIGKILL).

    python -m devstack.stack            # what `make run` does
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Literal

from app.config import load_settings_or_exit, variables_set
from app.migrate import upgrade
from devstack import PROJECT_ROOT
from devstack.broker_node import BrokerNodeError, RabbitNode
from devstack.ports import free_port
from devstack.processes import terminate, watch_until_stopped
from devstack.sinks.process import SinkProcess, gateway_url, start_sink_process

READY_TIMEOUT = 30.0


class StackError(RuntimeError):
    """A part of the stack did not start; the message says which and where its log is."""


@dataclass
class StackConfig:
    run_dir: Path
    web_port: int = 8000
    amqp_port: int = 5673
    amqp_dist_port: int | None = None
    smtp_port: int = 1025  # 0: the sink picks a free port as it binds (see `on_free_ports`)
    sms_port: int = 1026
    sink_delay_ms: float = 50.0
    sink_failure_rate: float = 0.0
    sink_timeout_rate: float = 0.0
    database_url: str | None = None
    amqp_url: str | None = None  # a broker run elsewhere: no private node is started
    consumer_concurrency: int = 50
    consumer_prefetch: int = 100
    workers: tuple[str, ...] = ("email", "sms", "relay")
    tcp_nodelay: bool = True
    echo: bool = False  # copy the children's output to our stdout, prefixed by name
    extra_env: dict[str, str] = field(default_factory=dict)

    @classmethod
    def on_free_ports(cls, run_dir: Path, **overrides: object) -> StackConfig:
        # The sinks are given 0: each binds a free port itself and reports it. The web and
        # the broker are handed ports picked ahead. Both kinds come from below the range
        # outgoing connections draw from (devstack/ports.py), so only another server's bind
        # could take one meanwhile, or between a sink's restart and its successor's bind.
        ports = {
            "web_port": free_port(),
            "amqp_port": free_port(),
            "amqp_dist_port": free_port(),
            "smtp_port": 0,
            "sms_port": 0,
        }
        return cls(run_dir=run_dir, **{**ports, **overrides})  # type: ignore[arg-type]


class Stack:
    def __init__(self, config: StackConfig) -> None:
        self.config = config
        self.run_dir = config.run_dir.resolve()
        self.log_dir = self.run_dir / "logs"
        self.node: RabbitNode | None = None
        self.sinks: dict[str, SinkProcess] = {}
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self._log_files: dict[str, IO[bytes]] = {}

    # -- addresses ---------------------------------------------------------------------------

    @property
    def amqp_url(self) -> str:
        if self.config.amqp_url:
            return self.config.amqp_url
        assert self.node is not None
        return self.node.amqp_url

    @property
    def database_url(self) -> str:
        return self.config.database_url or f"sqlite:///{self.run_dir / 'offload.db'}"

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.config.web_port}"

    def sink_port(self, kind: Literal["smtp", "sms"]) -> int:
        """The port the sink listens on once started (the configured one may be 0)."""
        sink = self.sinks.get(kind)
        if sink is not None:
            return sink.port
        return self.config.smtp_port if kind == "smtp" else self.config.sms_port

    def environment(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            DATABASE_URL=self.database_url,
            AMQP_URL=self.amqp_url,
            SMTP_HOST="127.0.0.1",
            SMTP_PORT=str(self.sink_port("smtp")),
            SMS_GATEWAY_URL=gateway_url("127.0.0.1", self.sink_port("sms")),
            HOST="127.0.0.1",
            PORT=str(self.config.web_port),
            BASE_URL=self.base_url,
            CONSUMER_CONCURRENCY=str(self.config.consumer_concurrency),
            CONSUMER_PREFETCH=str(self.config.consumer_prefetch),
            TCP_NODELAY="true" if self.config.tcp_nodelay else "false",
            PYTHONUNBUFFERED="1",
        )
        env.update(self.config.extra_env)
        return env

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> Stack:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        try:
            self.start_broker()
            self.start_sinks()
            self.say("applying migrations")
            upgrade(self.database_url)
            self.start_web()
            for worker in self.config.workers:
                self.start_worker(worker)
            # The webhooks worker is optional: started when the environment names endpoints.
            if self.environment().get("WEBHOOK_URLS") and "webhooks" not in self.config.workers:
                self.start_worker("webhooks")
        except BaseException:
            self.stop()
            raise
        return self

    def start_broker(self) -> None:
        if self.config.amqp_url:
            return
        self.node = RabbitNode(
            self.run_dir / "rabbitmq", self.config.amqp_port, dist_port=self.config.amqp_dist_port
        )
        self.say(f"starting RabbitMQ node {self.node.nodename}")
        started = time.monotonic()
        self.node.start()
        self.say(f"RabbitMQ ready in {time.monotonic() - started:.1f}s at {self.node.amqp_url}")

    def start_sinks(self) -> None:
        sink_dir = self.run_dir / "sinks"
        sink_dir.mkdir(parents=True, exist_ok=True)
        sinks: tuple[tuple[Literal["smtp", "sms"], int], ...] = (
            ("smtp", self.config.smtp_port),
            ("sms", self.config.sms_port),
        )
        for kind, port in sinks:
            self.sinks[kind] = start_sink_process(
                kind,
                port,
                sink_dir / f"{kind}.jsonl",
                delay_ms=self.config.sink_delay_ms,
                failure_rate=self.config.sink_failure_rate,
                timeout_rate=self.config.sink_timeout_rate if kind == "sms" else 0.0,
            )
        self.say(
            f"SMTP sink on :{self.sink_port('smtp')}, SMS gateway sink on :{self.sink_port('sms')} "
            f"({self.config.sink_delay_ms:g} ms each)"
        )

    def restart_sink(
        self,
        kind: Literal["smtp", "sms"],
        *,
        failure_rate: float = 0.0,
        timeout_rate: float = 0.0,
        hang_seconds: float | None = None,
    ) -> None:
        """Replace a sink by one that fails (or hangs) a share of requests; same port, same file."""
        old = self.sinks.pop(kind)
        old.stop()
        self.sinks[kind] = start_sink_process(
            kind,
            old.port,
            old.record_path,
            delay_ms=self.config.sink_delay_ms,
            failure_rate=failure_rate,
            timeout_rate=timeout_rate,
            hang_seconds=hang_seconds,
        )

    def start_web(self, *extra_args: str) -> None:
        args = [sys.executable, str(PROJECT_ROOT / "wsgi.py"), *extra_args]
        if not self.config.tcp_nodelay:
            args.append("--no-nodelay")
        self.spawn("web", args)
        self.wait_until_ready()

    def start_worker(
        self,
        worker: str,
        *,
        wait: bool = True,
        name: str | None = None,
        extra_env: dict[str, str] | None = None,
    ) -> None:
        """Start a consumer or the relay (as `name`, default the worker's own); by default,
        return once it has said it started (its signal handlers are installed by then, so a
        SIGTERM is a clean stop, not a kill)."""
        name = name or worker
        log_path = self.log_dir / f"{name}.log"
        marker = f"offload {worker} ".encode()
        before = _count_started(log_path, marker)
        process = self.spawn(
            name, [sys.executable, "-m", "services.workers", worker], extra_env=extra_env
        )
        deadline = time.monotonic() + READY_TIMEOUT
        while wait and _count_started(log_path, marker) <= before:
            if process.poll() is not None:
                raise StackError(f"the {name} worker exited; see {log_path}")
            if time.monotonic() > deadline:
                raise StackError(f"the {name} worker did not start; see {log_path}")
            time.sleep(0.05)

    def spawn(
        self, name: str, args: list[str], *, extra_env: dict[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        log_file = open(self.log_dir / f"{name}.log", "ab")  # noqa: SIM115 - closed in stop()
        self._log_files[name] = log_file
        process = subprocess.Popen(
            args,
            cwd=PROJECT_ROOT,
            env={**self.environment(), **(extra_env or {})},
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE if self.config.echo else log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # our Ctrl-C handler, not the terminal, stops them
        )
        if self.config.echo:
            threading.Thread(
                target=_copy_prefixed, args=(process, name, log_file), daemon=True
            ).start()
        self.processes[name] = process
        return process

    def wait_until_ready(self, timeout: float = READY_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.processes["web"].poll() is not None:
                raise StackError(f"the web process exited; see {self.log_dir / 'web.log'}")
            try:
                url = f"{self.base_url}/readyz"  # always our own http://127.0.0.1 address
                with urllib.request.urlopen(url, timeout=2) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.1)
        raise StackError(f"the web app was not ready within {timeout:.0f}s")

    def signal(self, name: str, signum: int) -> None:
        self.processes[name].send_signal(signum)

    def stop_process(self, name: str, *, timeout: float = 15.0) -> int | None:
        process = self.processes.pop(name, None)
        if process is None:
            return None
        terminate(process, timeout)
        log_file = self._log_files.pop(name, None)
        if log_file is not None:
            log_file.close()
        return process.returncode

    def stop(self) -> None:
        for name in list(self.processes):
            self.stop_process(name)
        for sink in self.sinks.values():
            sink.stop()
        self.sinks.clear()
        if self.node is not None:
            self.node.stop()
            self.node = None

    def __enter__(self) -> Stack:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    def say(self, message: str) -> None:
        if self.config.echo:
            print(f"[stack] {message}", flush=True)


def _count_started(log_path: Path, marker: bytes) -> int:
    try:
        content = log_path.read_bytes()
    except FileNotFoundError:
        return 0
    return sum(1 for line in content.splitlines() if line.startswith(marker) and b"started" in line)


def _copy_prefixed(process: subprocess.Popen[bytes], name: str, log_file: IO[bytes]) -> None:
    assert process.stdout is not None
    for line in process.stdout:
        log_file.write(line)
        log_file.flush()
        sys.stdout.write(f"{name:>6} | {line.decode(errors='replace')}")
        sys.stdout.flush()


def main(argv: list[str] | None = None) -> int:
    settings = load_settings_or_exit()
    given = variables_set()
    parser = argparse.ArgumentParser(description="Run the whole Offload demo stack.")
    parser.add_argument("--run-dir", default=".run", help="folder for data, logs and the node")
    parser.add_argument("--port", type=int, default=settings.port, help="web (default $PORT)")
    parser.add_argument("--amqp-port", type=int, default=5673)
    parser.add_argument("--smtp-port", type=int, default=1025)
    parser.add_argument("--sms-port", type=int, default=1026)
    parser.add_argument(
        "--delay-ms",
        type=float,
        default=settings.sink_delay_ms,
        help="sink delay, each (default $SINK_DELAY_MS, else 50)",
    )
    args = parser.parse_args(argv)
    config = StackConfig(
        run_dir=Path(args.run_dir),
        web_port=args.port,
        amqp_port=args.amqp_port,
        smtp_port=args.smtp_port,
        sms_port=args.sms_port,
        sink_delay_ms=args.delay_ms,
        # A broker or database of the user's own; otherwise a private node and .run/offload.db.
        amqp_url=settings.amqp_url if "AMQP_URL" in given else None,
        database_url=settings.database_url if "DATABASE_URL" in given else None,
        consumer_concurrency=settings.consumer_concurrency,
        consumer_prefetch=settings.consumer_prefetch,
        echo=True,
    )
    stack = Stack(config)
    stopping = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    signal.signal(signal.SIGINT, lambda *_: stopping.set())
    try:
        stack.start()
    except (BrokerNodeError, StackError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(
        f"\n  Offload is running: {stack.base_url}/register\n"
        f"  API: POST {stack.base_url}/api/users   sinks record to {stack.run_dir / 'sinks'}\n"
        f"  logs in {stack.log_dir}; Ctrl-C stops everything\n",
        flush=True,
    )
    watch_until_stopped(stack.processes, stopping, "stack")
    stack.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
