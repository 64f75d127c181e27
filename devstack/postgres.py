"""A private PostgreSQL cluster: Debian's server binaries, its own data folder, port and socket
folder, run as the `postgres` user when we are root (initdb refuses root).

The data folder is made under /tmp, not under the checkout: the server runs as `postgres`, which
may not be allowed into the checkout's (or pytest's) folders.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile

from devstack.ports import free_port


class PostgresError(RuntimeError):
    """The server could not be set up, started or stopped; the message says why."""


def postgres_bin() -> str | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return os.path.dirname(found[-1]) if found else None


def _as_postgres(command: list[str]) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *command] if os.geteuid() == 0 else command


class PostgresServer:
    """One throwaway cluster: `start()`, `url`, `restart()`, `stop()` (which removes it)."""

    def __init__(self, port: int | None = None, *, max_connections: int = 200) -> None:
        bin_dir = postgres_bin()
        if bin_dir is None:
            raise PostgresError("PostgreSQL is not installed: apt-get install -y postgresql")
        self.bin_dir = bin_dir
        self.port = port or free_port()
        self.max_connections = max_connections
        self.root = tempfile.mkdtemp(prefix="offload-pg-")
        os.chmod(self.root, 0o755)
        self.data = os.path.join(self.root, "data")
        self.sockets = os.path.join(self.root, "sockets")
        self.log_path = os.path.join(self.root, "server.log")

    @property
    def url(self) -> str:
        return f"postgresql://offload@127.0.0.1:{self.port}/postgres"

    def _run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            _as_postgres(list(args)), capture_output=True, text=True, check=False, timeout=120
        )
        if check and result.returncode != 0:
            program = os.path.basename(args[0])
            raise PostgresError(f"{program} failed: {result.stderr.strip()} (log: {self.log_path})")
        return result

    def start(self) -> PostgresServer:
        if not os.path.exists(self.data):
            os.mkdir(self.sockets)
            if os.geteuid() == 0:
                shutil.chown(self.root, "postgres")
                shutil.chown(self.sockets, "postgres")
            self._run(
                f"{self.bin_dir}/initdb", "-D", self.data, "--auth=trust", "-U", "offload",
                "-E", "UTF8", "--no-sync",
            )  # fmt: skip
        options = (
            f"-p {self.port} -k {self.sockets} -c listen_addresses=127.0.0.1 -c fsync=off "
            f"-c max_connections={self.max_connections}"
        )
        self._run(
            f"{self.bin_dir}/pg_ctl", "-D", self.data, "-o", options, "-l", self.log_path,
            "-w", "start",
        )  # fmt: skip
        return self

    def stop_server(self) -> None:
        """Stop the server (fast: open transactions roll back), keeping its data."""
        self._run(
            f"{self.bin_dir}/pg_ctl", "-D", self.data, "-m", "fast", "-w", "stop", check=False
        )

    def restart(self) -> None:
        self.stop_server()
        self.start()

    def stop(self) -> None:
        """Stop the server and remove its folder."""
        if os.path.exists(self.data):
            self.stop_server()
        shutil.rmtree(self.root, ignore_errors=True)
