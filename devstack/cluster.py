"""The production shape on one machine: nginx terminating TLS, gunicorn with gevent workers,
PostgreSQL, a three-node RabbitMQ cluster with quorum queues, two email and two SMS consumers,
two relays, and the sinks (`make cluster`; the cluster fault tests and the cluster soak).

It starts what an operator installs, from the files in `deploy/`: the environment file template,
the systemd units (their ExecStart, WorkingDirectory, EnvironmentFile and Environment lines) and
the nginx site, with the @NAME@ placeholders filled in with this run's paths and ports. Every
server listens on 127.0.0.1, keeps its data and logs under the run folder (PostgreSQL's under a
/tmp folder of its own) and is stopped by its PID or node name.

    python -m devstack.cluster              # what `make cluster` does; Ctrl-C stops all
"""

from __future__ import annotations

import argparse
import os
import re
import secrets
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Literal

from app.config import load_settings_or_exit
from devstack import PROJECT_ROOT
from devstack.broker_node import BrokerNodeError, RabbitNode
from devstack.ports import free_port
from devstack.postgres import PostgresError, PostgresServer
from devstack.processes import terminate, watch_until_stopped
from devstack.sinks.process import SinkProcess, start_sink_process

DEPLOY = PROJECT_ROOT / "deploy"
NGINX = "/usr/sbin/nginx"
READY_TIMEOUT = 60.0
PROMETHEUS_PLUGIN = "rabbitmq_prometheus"
WORKER_KINDS = ("email", "sms", "relay")


class ClusterError(RuntimeError):
    """A part of the cluster did not start; the message says which and where its log is."""


# -- the deploy/ files ------------------------------------------------------------------------


def render(text: str, values: dict[str, str]) -> str:
    """Fill in every @NAME@; a placeholder without a value is an error, not a silent blank."""

    def value(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in values:
            raise ClusterError(f"deploy/ template uses @{name}@, which the harness does not set")
        return values[name]

    return re.sub(r"@([A-Z_]+)@", value, text)


def read_env_file(text: str) -> dict[str, str]:
    """KEY=value lines, as systemd's EnvironmentFile reads them (comments and blanks skipped)."""
    env: dict[str, str] = {}
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#") and "=" in line:
            key, value = line.split("=", 1)
            env[key.strip()] = value.strip()
    return env


@dataclass(frozen=True)
class Unit:
    """What the harness takes from a systemd unit's [Service] section."""

    exec_start: list[str]
    working_directory: Path
    environment_file: Path | None
    environment: dict[str, str]


def read_unit(name: str, values: dict[str, str], instance: str = "") -> Unit:
    text = render((DEPLOY / "systemd" / name).read_text(), values).replace("%i", instance)
    service: dict[str, list[str]] = {}
    section = ""
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("["):
            section = line
        elif section == "[Service]" and "=" in line and not line.startswith("#"):
            key, value = line.split("=", 1)
            service.setdefault(key, []).append(value)
    environment: dict[str, str] = {}
    for assignment in service.get("Environment", []):
        for pair in shlex.split(assignment):
            key, value = pair.split("=", 1)
            environment[key] = value
    env_file = service.get("EnvironmentFile", [None])[0]
    return Unit(
        exec_start=shlex.split(service["ExecStart"][0]),
        working_directory=Path(service.get("WorkingDirectory", [str(PROJECT_ROOT)])[0]),
        environment_file=Path(env_file) if env_file else None,
        environment=environment,
    )


def procfile_command(name: str) -> list[str]:
    for line in (PROJECT_ROOT / "Procfile").read_text().splitlines():
        if line.startswith(f"{name}:"):
            return shlex.split(line.split(":", 1)[1])
    raise ClusterError(f"no {name} line in the Procfile")


# -- the cluster ------------------------------------------------------------------------------


@dataclass
class ClusterConfig:
    run_dir: Path
    tls_port: int = 8443
    web_port: int = 0
    amqp_ports: tuple[int, ...] = ()
    prometheus_ports: tuple[int, ...] = ()
    smtp_port: int = 0
    sms_port: int = 0
    sink_delay_ms: float = 50.0
    consumers: int = 2  # per channel
    relays: int = 2
    web_workers: int = 2
    rate_limits: bool = True
    echo: bool = False
    extra_env: dict[str, str] = field(default_factory=dict)

    @classmethod
    def on_free_ports(cls, run_dir: Path, **overrides: object) -> ClusterConfig:
        """Every port free, the TLS one included (the tests and the soak)."""
        return cls(run_dir=run_dir, tls_port=free_port(), **overrides)  # type: ignore[arg-type]


class Cluster:
    def __init__(self, config: ClusterConfig) -> None:
        self.config = config
        self.run_dir = config.run_dir.resolve()
        self.log_dir = self.run_dir / "logs"
        self.web_port = config.web_port or free_port()
        amqp_ports = config.amqp_ports or tuple(free_port() for _ in range(3))
        prometheus_ports = config.prometheus_ports or tuple(free_port() for _ in amqp_ports)
        cookie = secrets.token_hex(16)
        self.nodes = [
            RabbitNode(
                self.run_dir / f"rabbitmq-{i + 1}",
                port,
                dist_port=free_port(),
                plugins=(PROMETHEUS_PLUGIN,),
                extra_conf=f"prometheus.tcp.ip = 127.0.0.1\nprometheus.tcp.port = {prom}\n",
                cookie=cookie,
            )
            for i, (port, prom) in enumerate(zip(amqp_ports, prometheus_ports, strict=True))
        ]
        self.prometheus_ports = prometheus_ports
        self.postgres: PostgresServer | None = None
        self.sinks: dict[str, SinkProcess] = {}
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self.env: dict[str, str] = {}
        self._values: dict[str, str] = {}
        self._log_files: dict[str, IO[bytes]] = {}

    # -- addresses ---------------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        return f"https://127.0.0.1:{self.config.tls_port}"

    @property
    def web_url(self) -> str:
        """gunicorn itself, behind nginx (loopback only)."""
        return f"http://127.0.0.1:{self.web_port}"

    @property
    def cert_path(self) -> Path:
        return self.run_dir / "tls" / "cert.pem"

    def amqp_urls(self, first: int = 0) -> str:
        """Every node's URL, comma-separated, starting with node `first` (0-based)."""
        urls = [node.amqp_url for node in self.nodes]
        return ",".join(urls[first:] + urls[:first])

    @property
    def amqp_url(self) -> str:
        return self.amqp_urls()

    @property
    def database_url(self) -> str:
        assert self.postgres is not None
        return self.postgres.url

    def scrape_urls(self) -> list[str]:
        """rabbitmq_prometheus's per-queue metrics, one address per node."""
        return [f"http://127.0.0.1:{port}/metrics/per-object" for port in self.prometheus_ports]

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> Cluster:
        self._check_tls_port()
        self.log_dir.mkdir(parents=True, exist_ok=True)
        try:
            self.start_brokers()
            self.start_postgres()
            self.start_sinks()
            self.write_environment()
            self.release()
            self.start_web()
            self.start_nginx()
            for n in range(1, self.config.consumers + 1):
                self.start_worker("email", n)
                self.start_worker("sms", n)
            for n in range(1, self.config.relays + 1):
                self.start_worker("relay", n)
        except BaseException:
            self.stop()
            raise
        return self

    def _check_tls_port(self) -> None:
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", self.config.tls_port))
            except OSError:
                raise ClusterError(
                    f"port {self.config.tls_port} on 127.0.0.1 is taken: stop what uses it or "
                    "choose another with --tls-port (CLUSTER_TLS_PORT for make cluster)"
                ) from None

    def start_brokers(self) -> None:
        self.say(f"starting {len(self.nodes)} RabbitMQ nodes")
        started = time.monotonic()
        # Side by side: each node boots in several seconds, mostly waiting.
        with ThreadPoolExecutor(len(self.nodes)) as pool:
            for future in [pool.submit(node.start) for node in self.nodes]:
                future.result()
        seed = self.nodes[0]
        for node in self.nodes[1:]:
            for args in (("stop_app",), ("join_cluster", seed.nodename), ("start_app",)):
                result = node.ctl(*args)
                if result.returncode != 0:
                    raise ClusterError(
                        f"{node.nodename}: rabbitmqctl {' '.join(args)} failed: "
                        f"{result.stderr.strip() or result.stdout.strip()}"
                    )
        self.say(
            f"RabbitMQ cluster of {len(self.nodes)} ready in {time.monotonic() - started:.1f}s: "
            f"{', '.join(node.nodename for node in self.nodes)}"
        )

    def start_postgres(self) -> None:
        self.postgres = PostgresServer(max_connections=300).start()
        self.say(f"PostgreSQL on 127.0.0.1:{self.postgres.port} (data in {self.postgres.root})")

    def start_sinks(self) -> None:
        sink_dir = self.run_dir / "sinks"
        sink_dir.mkdir(parents=True, exist_ok=True)
        # 0: each sink picks a free port as it binds; the environment reads the real one.
        sinks: tuple[tuple[Literal["smtp", "sms"], int], ...] = (
            ("smtp", self.config.smtp_port),
            ("sms", self.config.sms_port),
        )
        for kind, port in sinks:
            self.sinks[kind] = start_sink_process(
                kind, port, sink_dir / f"{kind}.jsonl", delay_ms=self.config.sink_delay_ms
            )

    def restart_sink(self, kind: Literal["smtp", "sms"], *, failure_rate: float = 0.0) -> None:
        """Replace a sink by one that fails a share of requests; same port, same file."""
        old = self.sinks.pop(kind)
        old.stop()
        self.sinks[kind] = start_sink_process(
            kind,
            old.port,
            old.record_path,
            delay_ms=self.config.sink_delay_ms,
            failure_rate=failure_rate,
        )

    def write_environment(self) -> None:
        """Render deploy/offload.env.template into the run folder, as an operator would."""
        self._values = {
            "APP_DIR": str(PROJECT_ROOT),
            "VENV": sys.prefix,
            "ENV_FILE": str(self.run_dir / "offload.env"),
            "RUNTIME_DIR": str(self.run_dir / "run"),
            "SECRET_KEY": secrets.token_urlsafe(32),
            "BASE_URL": self.base_url,
            "WEB_PORT": str(self.web_port),
            "DATABASE_URL": self.database_url,
            "AMQP_URLS": self.amqp_urls(),
            "SMTP_HOST": "127.0.0.1",
            "SMTP_PORT": str(self.sinks["smtp"].port),
            "SMS_GATEWAY_URL": self.sinks["sms"].messages_url,
            "TLS_LISTEN": f"127.0.0.1:{self.config.tls_port}",
            "SERVER_NAME": "127.0.0.1",
            "TLS_CERT": str(self.cert_path),
            "TLS_KEY": str(self.run_dir / "tls" / "key.pem"),
        }
        text = render((DEPLOY / "offload.env.template").read_text(), self._values)
        (self.run_dir / "offload.env").write_text(text)
        self.env = read_env_file(text)
        self.env["WEB_WORKERS"] = str(self.config.web_workers)
        if not self.config.rate_limits:
            self.env["RATE_LIMIT_ENABLED"] = "false"  # tests register thousands from one address
        self.env.update(self.config.extra_env)

    def unit(self, name: str, instance: str = "") -> Unit:
        unit = read_unit(name, self._values, instance)
        if unit.environment_file is not None and not unit.environment_file.exists():
            raise ClusterError(f"{name}: EnvironmentFile {unit.environment_file} is missing")
        return unit

    def _unit_env(self, unit: Unit, extra: dict[str, str] | None = None) -> dict[str, str]:
        env = dict(os.environ)
        env.pop("PROMETHEUS_MULTIPROC_DIR", None)
        # The unit's EnvironmentFile (as rendered, plus the harness's overrides), then its own.
        env.update(self.env)
        env.update(unit.environment)
        env.update(extra or {})
        env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '')}"
        env["PYTHONUNBUFFERED"] = "1"
        return env

    def release(self) -> None:
        unit = self.unit("offload-release.service")
        self.say("release: applying migrations")
        result = subprocess.run(
            unit.exec_start,
            cwd=unit.working_directory,
            env=self._unit_env(unit),
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        if result.returncode != 0:
            raise ClusterError(f"the release unit failed: {result.stderr.strip()[-2000:]}")

    def start_web(self) -> None:
        unit = self.unit("offload-web.service")
        metrics_dir = unit.environment.get("PROMETHEUS_MULTIPROC_DIR")
        if metrics_dir:
            Path(metrics_dir).mkdir(parents=True, exist_ok=True)  # systemd's RuntimeDirectory
        self.spawn("web", unit)
        self.wait_until_ready(f"{self.web_url}/readyz", self.processes["web"], "gunicorn")

    def start_nginx(self) -> None:
        tls = self.run_dir / "tls"
        tls.mkdir(exist_ok=True)
        subprocess.run(
            [
                "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                "-keyout", str(tls / "key.pem"), "-out", str(self.cert_path),
            ],
            check=True,
            capture_output=True,
        )  # fmt: skip
        prefix = self.run_dir / "nginx"
        for folder in ("body", "proxy", "fastcgi", "uwsgi", "scgi"):
            (prefix / folder).mkdir(parents=True, exist_ok=True)
        site = prefix / "offload.conf"
        site.write_text(render((DEPLOY / "nginx" / "offload.conf").read_text(), self._values))
        # The site is the operator's file; this wrapper stands in for Debian's nginx.conf.
        (prefix / "nginx.conf").write_text(
            f"daemon off;\nmaster_process off;\npid {prefix}/nginx.pid;\n"
            f"error_log {self.log_dir}/nginx-error.log;\nevents {{}}\nhttp {{\n"
            f"    access_log off;\n    client_body_temp_path {prefix}/body;\n"
            f"    proxy_temp_path {prefix}/proxy;\n    fastcgi_temp_path {prefix}/fastcgi;\n"
            f"    uwsgi_temp_path {prefix}/uwsgi;\n    scgi_temp_path {prefix}/scgi;\n"
            f"    include {site};\n}}\n"
        )
        args = [NGINX, "-c", str(prefix / "nginx.conf"), "-p", str(prefix)]
        args += ["-e", str(self.log_dir / "nginx-error.log")]
        self.spawn_args("nginx", args, dict(os.environ), PROJECT_ROOT)
        self.wait_until_ready(f"{self.base_url}/healthz", self.processes["nginx"], "nginx")

    def start_worker(self, kind: str, instance: int, *, wait: bool = True) -> str:
        """Start `offload-<kind>@<instance>`; its AMQP_URL starts with a node of its own, so
        the consumers spread over the cluster. Returns the process's name."""
        name = f"{kind}-{instance}"
        unit = self.unit(f"offload-{kind}@.service", str(instance))
        log_path = self.log_dir / f"{name}.log"
        before = _count_started(log_path)
        extra = {"AMQP_URL": self.amqp_urls((instance - 1) % len(self.nodes))}
        process = self.spawn(name, unit, extra)
        deadline = time.monotonic() + READY_TIMEOUT
        while wait and _count_started(log_path) <= before:
            if process.poll() is not None:
                raise ClusterError(f"{name} exited; see {log_path}")
            if time.monotonic() > deadline:
                raise ClusterError(f"{name} did not start; see {log_path}")
            time.sleep(0.05)
        return name

    def spawn(
        self, name: str, unit: Unit, extra: dict[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        return self.spawn_args(
            name, unit.exec_start, self._unit_env(unit, extra), unit.working_directory
        )

    def spawn_args(
        self, name: str, args: list[str], env: dict[str, str], cwd: Path
    ) -> subprocess.Popen[bytes]:
        log_file = open(self.log_dir / f"{name}.log", "ab")  # noqa: SIM115 - closed in stop()
        self._log_files[name] = log_file
        process = subprocess.Popen(
            args,
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE if self.config.echo else log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        if self.config.echo:
            threading.Thread(
                target=_copy_prefixed, args=(process, name, log_file), daemon=True
            ).start()
        self.processes[name] = process
        return process

    def wait_until_ready(self, url: str, process: subprocess.Popen[bytes], what: str) -> None:
        import ssl

        tls = ssl.create_default_context(cafile=str(self.cert_path)) if url[:5] == "https" else None
        deadline = time.monotonic() + READY_TIMEOUT
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise ClusterError(f"{what} exited with {process.returncode}; see {self.log_dir}")
            try:
                with urllib.request.urlopen(url, timeout=2, context=tls) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.2)
        raise ClusterError(f"{what} was not ready at {url} within {READY_TIMEOUT:.0f}s")

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
        for name in reversed(list(self.processes)):
            self.stop_process(name)
        for sink in self.sinks.values():
            sink.stop()
        self.sinks.clear()
        if self.postgres is not None:
            self.postgres.stop()
            self.postgres = None
        running = [node for node in self.nodes if self.node_alive(node)]
        if running:
            with ThreadPoolExecutor(len(running)) as pool:
                list(pool.map(RabbitNode.stop, running))

    def __enter__(self) -> Cluster:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    def say(self, message: str) -> None:
        if self.config.echo:
            print(f"[cluster] {message}", flush=True)

    # -- what the fault tests and the soak need ----------------------------------------------

    def leader_of(self, queue: str) -> RabbitNode:
        """The node that leads the quorum queue `queue` now."""
        for node in self.nodes:
            if not self.node_alive(node):
                continue  # killed or stopped by us
            try:
                result = node.ctl(
                    "list_queues", "name", "leader", "--no-table-headers", "--quiet", timeout=60
                )
            except subprocess.TimeoutExpired:
                continue
            for line in result.stdout.splitlines():
                parts = line.split()
                if len(parts) == 2 and parts[0] == queue:
                    return self.node_named(parts[1])
        raise ClusterError(f"no running node knows the leader of {queue}")

    @staticmethod
    def node_alive(node: RabbitNode) -> bool:
        """Whether the node's Erlang VM runs (stopped, killed or never started: False)."""
        pid = node.pid()
        if pid is None:
            return False
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True

    def node_named(self, nodename: str) -> RabbitNode:
        return next(node for node in self.nodes if node.nodename == nodename)

    def node_on_port(self, port: int) -> RabbitNode:
        return next(node for node in self.nodes if node.port == port)

    def kill_node(self, node: RabbitNode) -> None:
        """SIGKILL the node's Erlang VM (a crash: nothing is flushed, no goodbye to clients)."""
        node.kill()
        pid_file = node.pid_file
        if pid_file.exists():
            pid_file.unlink()

    def restart_node(self, node: RabbitNode) -> None:
        """Start a stopped or killed node again on its data: it rejoins its cluster."""
        node.start()

    def consumer_node(self, name: str) -> RabbitNode | None:
        """The node the worker `name` consumes from now (the last node its log names)."""
        try:
            text = (self.log_dir / f"{name}.log").read_text(errors="replace")
        except FileNotFoundError:
            return None
        ports = re.findall(r"consuming offload\.\w+ on 127\.0\.0\.1:(\d+)", text)
        return self.node_on_port(int(ports[-1])) if ports else None

    def gunicorn_workers(self) -> list[int]:
        """The PIDs of the gunicorn master's children (its workers)."""
        master = self.processes["web"].pid
        workers = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            # pid (comm) state ppid ...: comm may hold spaces, so split after the last ")".
            if int(stat.rsplit(")", 1)[1].split()[1]) == master:
                workers.append(int(entry.name))
        return sorted(workers)


def _count_started(log_path: Path) -> int:
    try:
        content = log_path.read_bytes()
    except FileNotFoundError:
        return 0
    return sum(
        1 for line in content.splitlines() if line.startswith(b"offload ") and b"started" in line
    )


def _copy_prefixed(process: subprocess.Popen[bytes], name: str, log_file: IO[bytes]) -> None:
    assert process.stdout is not None
    for line in process.stdout:
        log_file.write(line)
        log_file.flush()
        sys.stdout.write(f"{name:>8} | {line.decode(errors='replace')}")
        sys.stdout.flush()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run Offload's production shape on this machine.")
    parser.add_argument("--run-dir", default=".run/cluster", help="data, logs and sockets")
    settings = load_settings_or_exit()
    parser.add_argument(
        "--tls-port",
        type=int,
        default=settings.cluster_tls_port,
        help="nginx's HTTPS port (default $CLUSTER_TLS_PORT, else 8443)",
    )
    parser.add_argument(
        "--delay-ms",
        type=float,
        default=settings.sink_delay_ms,
        help="sink delay, each (default $SINK_DELAY_MS, else 50)",
    )
    parser.add_argument("--quiet", action="store_true", help="do not copy the processes' output")
    args = parser.parse_args(argv)
    cluster = Cluster(
        ClusterConfig(
            run_dir=Path(args.run_dir),
            tls_port=args.tls_port,
            sink_delay_ms=args.delay_ms,
            echo=not args.quiet,
        )
    )
    stopping = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    signal.signal(signal.SIGINT, lambda *_: stopping.set())
    try:
        cluster.start()
    except (BrokerNodeError, PostgresError, ClusterError, subprocess.CalledProcessError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    nodes = "\n".join(
        f"    {node.nodename}  {node.amqp_url}  http://127.0.0.1:{prom}/metrics/per-object"
        for node, prom in zip(cluster.nodes, cluster.prometheus_ports, strict=True)
    )
    print(
        f"\n  Offload (production shape) is running: {cluster.base_url}/register\n"
        f"  (a throwaway self-signed certificate: {cluster.cert_path})\n"
        f"  API: POST {cluster.base_url}/api/users   web metrics: {cluster.web_url}/metrics\n"
        f"  RabbitMQ cluster (quorum queues):\n{nodes}\n"
        f"  PostgreSQL: {cluster.database_url}\n"
        f"  environment file: {cluster.run_dir / 'offload.env'}; logs in {cluster.log_dir}\n"
        f"  sinks record to {cluster.run_dir / 'sinks'}; Ctrl-C stops everything\n",
        flush=True,
    )
    watch_until_stopped(cluster.processes, stopping, "cluster")
    cluster.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
