"""A private RabbitMQ node under a project folder, for the demo, the benchmark and the tests.

It runs Debian's `rabbitmq-server` directly with its own node name, ports, data, logs, plugins
file, pid file and HOME (so its own Erlang cookie), and never touches the system service.
Several can run side by side (`make run` and `make test` at once) as long as ports differ.

    python -m devstack.broker_node start --dir .run/rabbitmq --port 5673
    python -m devstack.broker_node stop --dir .run/rabbitmq --port 5673
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

from devstack.ports import ephemeral_port_range, free_port

SERVER = "/usr/lib/rabbitmq/bin/rabbitmq-server"
CTL = "/usr/lib/rabbitmq/bin/rabbitmqctl"
START_TIMEOUT = 60


class BrokerNodeError(RuntimeError):
    """The node could not be started or stopped; the message says why and what to do."""


def rabbitmq_installed() -> bool:
    return os.path.exists(SERVER) and os.path.exists(CTL)


class QueueLayout(NamedTuple):
    """How a classic queue stores its messages: layout version 1 or 2, mode default or lazy."""

    version: int
    mode: str


class RabbitNode:
    def __init__(
        self,
        base_dir: str | Path,
        port: int,
        *,
        dist_port: int | None = None,
        plugins: tuple[str, ...] = (),
        extra_conf: str = "",
        cookie: str | None = None,
    ) -> None:
        self.base_dir = Path(base_dir).resolve()
        self.port = port
        # A cluster's nodes share one Erlang cookie (in each node's HOME) and may enable plugins
        # (rabbitmq_prometheus) with their settings in rabbitmq.conf.
        self.plugins = plugins
        self.extra_conf = extra_conf
        self.cookie = cookie
        # RabbitMQ's own default is port + 20000: for a port `free_port` picked, that lands in
        # the ephemeral range (any outgoing connection may hold it) or past 65535.
        conventional = port + 20000
        self.dist_port = dist_port or (
            conventional if conventional < ephemeral_port_range()[0] else free_port()
        )
        self.nodename = f"offload{port}@localhost"
        self.pid_file = self.base_dir / "rabbit.pid"
        self.log_dir = self.base_dir / "log"
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def amqp_url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}/%2F"

    def environment(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            RABBITMQ_NODENAME=self.nodename,
            RABBITMQ_NODE_IP_ADDRESS="127.0.0.1",
            RABBITMQ_NODE_PORT=str(self.port),
            RABBITMQ_DIST_PORT=str(self.dist_port),
            RABBITMQ_MNESIA_BASE=str(self.base_dir / "mnesia"),
            RABBITMQ_LOG_BASE=str(self.log_dir),
            RABBITMQ_ENABLED_PLUGINS_FILE=str(self.base_dir / "enabled_plugins"),
            RABBITMQ_PID_FILE=str(self.pid_file),
            RABBITMQ_CONFIG_FILE=str(self.base_dir / "rabbitmq"),
            RABBITMQ_ADVANCED_CONFIG_FILE=str(self.base_dir / "advanced.config"),
            HOME=str(self.base_dir),
            ERL_CRASH_DUMP=str(self.log_dir / "erl_crash.dump"),
        )
        return env

    def _prepare(self) -> None:
        if not rabbitmq_installed():
            raise BrokerNodeError(
                "RabbitMQ is not installed: run `apt-get install -y rabbitmq-server` as root "
                "(Debian), or set AMQP_URL to a broker you run yourself."
            )
        self.log_dir.mkdir(parents=True, exist_ok=True)
        (self.base_dir / "enabled_plugins").write_text(f"[{','.join(self.plugins)}].\n")
        (self.base_dir / "advanced.config").write_text("[].\n")
        # The free-disk limit defaults to 50 MB; keep it, but say where to look if it trips.
        (self.base_dir / "rabbitmq.conf").write_text(
            "loopback_users.guest = true\nlog.file.level = warning\n" + self.extra_conf
        )
        if self.cookie is not None:
            cookie_file = self.base_dir / ".erlang.cookie"
            if cookie_file.exists():
                cookie_file.chmod(0o600)
            cookie_file.write_text(self.cookie)
            cookie_file.chmod(0o400)  # Erlang refuses a cookie others can read

    def ctl(self, *args: str, timeout: float = 90) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [CTL, "-n", self.nodename, *args],
            env=self.environment(),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def is_running(self) -> bool:
        return self.ctl("status", timeout=30).returncode == 0

    def _ctl_or_raise(self, *args: str) -> str:
        done = self.ctl(*args)
        if done.returncode != 0:
            raise BrokerNodeError(f"rabbitmqctl {args[0]}: {done.stderr.strip()}")
        return done.stdout

    @contextlib.contextmanager
    def vhost(self, name: str) -> Iterator[str]:
        """A vhost for guest, deleted afterwards; yields its AMQP URL."""
        self._ctl_or_raise("add_vhost", name)
        try:
            self._ctl_or_raise("set_permissions", "-p", name, "guest", ".*", ".*", ".*")
            yield self.amqp_url.rsplit("/", 1)[0] + f"/{name}"
        finally:
            self.ctl("delete_vhost", name)

    def queue_layout(self, vhost: str, queue: str) -> QueueLayout:
        """The layout version and mode a classic queue runs in, as the broker reports them
        (not what its arguments asked for), read in one `rabbitmqctl eval`."""
        reported = self._ctl_or_raise(
            "eval",
            f'{{ok, Q}} = rabbit_amqqueue:lookup(rabbit_misc:r(<<"{vhost}">>, queue, '
            f'<<"{queue}">>)), '
            "[{backing_queue_status, S}] = rabbit_amqqueue:info(Q, [backing_queue_status]), "
            "{proplists:get_value(version, S), proplists:get_value(mode, S)}.",
        )
        version, mode = reported.strip().strip("{}").split(",")  # e.g. {2,lazy}
        return QueueLayout(int(version), mode)

    def start(self, *, timeout: float = START_TIMEOUT) -> None:
        """Start the node and return once it accepts connections."""
        self._prepare()
        if self.pid_file.exists():
            self.pid_file.unlink()
        with open(self.log_dir / "startup.log", "ab") as startup_log:
            self._process = subprocess.Popen(
                [SERVER],
                cwd=self.base_dir,
                env=self.environment(),
                stdout=startup_log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,  # Ctrl-C in a terminal is handled by our parent
            )
        deadline = time.monotonic() + timeout
        while not self.pid_file.exists():
            if self._process.poll() is not None or time.monotonic() > deadline:
                raise BrokerNodeError(f"RabbitMQ did not start; see {self.log_dir}/startup.log")
            time.sleep(0.1)
        result = self.ctl("wait", str(self.pid_file), "--timeout", str(int(timeout)))
        if result.returncode != 0:
            self.kill()
            raise BrokerNodeError(
                f"RabbitMQ node {self.nodename} did not become ready: {result.stderr.strip()}"
                f" (logs in {self.log_dir})"
            )

    def pid(self) -> int | None:
        try:
            return int(self.pid_file.read_text().strip())
        except (OSError, ValueError):
            return None

    def stop(self) -> None:
        """Stop gracefully (queues are flushed to disk), falling back to SIGKILL by PID."""
        pid = self.pid()
        result = self.ctl("stop", str(self.pid_file), timeout=60) if pid else None
        if result is None or result.returncode != 0:
            self.kill()
        if self._process is not None:
            try:
                self._process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.kill()
            self._process = None

    def kill(self) -> None:
        pid = self.pid()
        if pid:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if self._process is not None and self._process.poll() is None:
            self._process.kill()
            self._process.wait(timeout=10)

    def restart(self) -> None:
        """Stop gracefully and start again on the same data: durable queues and their
        persistent messages survive (the soak's and the fault tests' broker restart)."""
        self.stop()
        self.start()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Start or stop a private RabbitMQ node.")
    parser.add_argument("action", choices=["start", "stop", "status"])
    parser.add_argument("--dir", default=".run/rabbitmq", help="the node's folder")
    parser.add_argument("--port", type=int, default=5673, help="AMQP port (default 5673)")
    args = parser.parse_args(argv)
    node = RabbitNode(args.dir, args.port)
    try:
        if args.action == "start":
            started = time.monotonic()
            node.start()
            print(
                f"RabbitMQ node {node.nodename} ready in {time.monotonic() - started:.1f}s "
                f"at {node.amqp_url}"
            )
        elif args.action == "stop":
            node.stop()
            print(f"RabbitMQ node {node.nodename} stopped")
        else:
            running = node.is_running()
            print(f"RabbitMQ node {node.nodename}: {'running' if running else 'not running'}")
            return 0 if running else 1
    except BrokerNodeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
