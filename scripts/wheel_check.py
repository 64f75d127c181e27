"""Build the wheel and prove it works on its own, as an operator would install it.

    .venv/bin/python scripts/wheel_check.py      (or `make wheel-check`; CI runs it before tests)

1. builds the wheel from the checkout's files (tracked, or new and not ignored);
2. checks what it ships: app, services, migrations, wsgi; never devstack, bench or tests;
3. installs it with the locked dependencies (`--require-hashes`) into a fresh venv in a temporary
   folder, and runs everything below from there, so the source tree is not importable;
4. runs every console script's `--help`, and each with a bad setting (one line, status 2);
5. migrates a fresh SQLite database with `offload-migrate` and with `python -m app.migrate`;
6. starts a private RabbitMQ node (the repository's devstack), serves with `offload-web`, and
   registers one user: 201, and the email and SMS jobs are on their queues.

Every step has a time bound; the processes it started are stopped by PID.
"""

from __future__ import annotations

import argparse
import configparser
import contextlib
import os
import secrets
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # the harness (devstack) and the message contract, from the repo

from app.jobs import CHANNELS, work_queue  # noqa: E402
from devstack.broker_node import RabbitNode, rabbitmq_installed  # noqa: E402
from devstack.ports import free_port  # noqa: E402

SHIPPED = {"app", "services", "migrations", "wsgi.py"}
MUST_SHIP = [
    "wsgi.py",
    "app/templates/register.html",
    "app/static/style.css",
    "migrations/env.py",
    "migrations/script.py.mako",
    "migrations/versions/0001_users_and_notifications.py",
]
# Arguments a script needs before it reads the settings.
REQUIRED_ARGS = {"offload-parked": ["list"]}
IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}


class CheckFailed(Exception):
    """A step did not do what it should; the message says which and why."""


def step(title: str) -> None:
    print(f"-- {title}", flush=True)


def run(
    args: list[str | Path],
    *,
    timeout: float,
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
) -> str:
    started = time.monotonic()
    result = subprocess.run(
        [str(a) for a in args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if result.returncode != 0:
        raise CheckFailed(
            f"{' '.join(map(str, args))} exited {result.returncode}\n{result.stdout}{result.stderr}"
        )
    shown = " ".join(a.name if isinstance(a, Path) else a for a in args)
    print(f"   ok ({time.monotonic() - started:.1f}s): {shown[:110]}", flush=True)
    return str(result.stdout)


def build_wheel(work: Path) -> Path:
    step("building the wheel from a copy of the checkout")
    files = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        check=True,
        timeout=60,
    ).stdout.split(b"\0")
    source = work / "src"
    for name in filter(None, files):
        path = ROOT / os.fsdecode(name)
        if path.is_file():  # a tracked file deleted in the working tree is not shipped
            target = source / os.fsdecode(name)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, target)
    run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", work / "dist", source],
        timeout=300,
    )
    (wheel,) = (work / "dist").glob("offload-*.whl")
    return wheel


def inspect_wheel(wheel: Path) -> list[str]:
    step(f"inspecting {wheel.name}")
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        entry_points = archive.read(
            next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
        ).decode()
    top = {name.split("/")[0] for name in names if ".dist-info/" not in name}
    if top != SHIPPED:
        raise CheckFailed(f"the wheel ships {sorted(top)}, expected {sorted(SHIPPED)}")
    missing = [name for name in MUST_SHIP if name not in names]
    if missing:
        raise CheckFailed(f"the wheel lacks {missing}")
    parser = configparser.ConfigParser()
    parser.read_string(entry_points)
    scripts = sorted(parser["console_scripts"])
    print(f"   ok: ships {sorted(top)}; console scripts {', '.join(scripts)}")
    return scripts


def install(work: Path, wheel: Path) -> Path:
    step("installing it with requirements.lock into a fresh venv outside the repository")
    venv = work / "venv"
    run([sys.executable, "-m", "venv", venv], timeout=120)
    pip: list[str | Path] = [
        venv / "bin" / "python",
        *["-m", "pip", "install", "-q", "--disable-pip-version-check"],
    ]
    run([*pip, "--require-hashes", "-r", ROOT / "requirements.lock"], timeout=600)
    run([*pip, "--no-deps", wheel], timeout=120)
    # The wheel's declared dependencies are all satisfied by the lock (nothing missing from it).
    run([venv / "bin" / "python", "-m", "pip", "check"], timeout=60)
    return venv / "bin"


def clean_env(bin_dir: Path, **settings: str) -> dict[str, str]:
    # The child sees only the installed package: no path into the checkout, no inherited
    # Offload settings beyond those given.
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    env.pop("VIRTUAL_ENV", None)
    env["PATH"] = f"{bin_dir}{os.pathsep}{env.get('PATH', '')}"
    env.update(settings)
    return env


def check_isolation(bin_dir: Path, cwd: Path) -> None:
    step("the package is imported from the venv, not the checkout")
    probe = "import app, migrations, services, wsgi; print(app.__file__, migrations.__file__)"
    out = run([bin_dir / "python", "-c", probe], timeout=60, cwd=cwd, env=clean_env(bin_dir))
    venv = str(bin_dir.parent)
    if not all(path.startswith(venv) for path in out.split()):
        raise CheckFailed(f"imported from outside the venv: {out}")


def check_scripts(bin_dir: Path, scripts: list[str], cwd: Path) -> None:
    step("every console script: --help, and a bad setting")
    for name in scripts:
        run([bin_dir / name, "--help"], timeout=60, cwd=cwd, env=clean_env(bin_dir))
        result = subprocess.run(
            [bin_dir / name, *REQUIRED_ARGS.get(name, [])],
            cwd=cwd,
            env=clean_env(bin_dir, PORT="not-a-number"),
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        expected = "configuration error: PORT must be a whole number, not 'not-a-number'\n"
        if result.returncode != 2 or result.stderr != expected:
            raise CheckFailed(
                f"{name} with PORT=not-a-number: status {result.returncode}, {result.stderr!r}"
            )
        print(f"   ok: {name} gives the one-line settings error, status 2")


def check_migrate(bin_dir: Path, cwd: Path) -> Path:
    step("migrating fresh SQLite databases from the installed package")
    databases: list[Path] = []
    commands: list[list[str | Path]] = [
        [bin_dir / "offload-migrate"],
        [bin_dir / "python", "-m", "app.migrate"],
    ]
    for command in commands:
        database = cwd / f"offload-{len(databases)}.db"
        env = clean_env(bin_dir, DATABASE_URL=f"sqlite:///{database}")
        run(command, timeout=120, cwd=cwd, env=env)
        with contextlib.closing(sqlite3.connect(database)) as db:
            tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master")}
            (version,) = db.execute("SELECT version_num FROM alembic_version").fetchone()
        if not {"users", "notifications"} <= tables:
            raise CheckFailed(f"{command}: tables {sorted(tables)}")
        print(f"   ok: {database.name} at revision {version}")
        databases.append(database)
    return databases[0]


def stop_process(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        os.kill(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.kill(process.pid, signal.SIGKILL)
            process.wait(timeout=10)


@contextlib.contextmanager
def broker(work: Path) -> Iterator[RabbitNode]:
    node = RabbitNode(work / "rabbitmq", free_port())
    started = time.monotonic()
    node.start()
    print(f"   ok ({time.monotonic() - started:.1f}s): RabbitMQ at {node.amqp_url}", flush=True)
    try:
        yield node
    finally:
        node.stop()


def check_registration(bin_dir: Path, cwd: Path, database: Path, work: Path) -> None:
    step("one registration through offload-web and a private RabbitMQ node")
    if not rabbitmq_installed():
        if IN_CI:
            raise CheckFailed("RabbitMQ is required in CI but missing")
        print("   SKIPPED: RabbitMQ is not installed (apt-get install rabbitmq-server)")
        return
    with broker(work) as node:
        port = free_port()
        env = clean_env(
            bin_dir,
            DATABASE_URL=f"sqlite:///{database}",
            AMQP_URL=node.amqp_url,
            HOST="127.0.0.1",
            PORT=str(port),
            DISPATCH_MODE="queued",
            SECRET_KEY=secrets.token_hex(16),
        )
        log_path = work / "web.log"
        with open(log_path, "wb") as log:
            web = subprocess.Popen(
                [bin_dir / "offload-web"],
                cwd=cwd,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        try:
            base = f"http://127.0.0.1:{port}"
            wait_until_serving(base, web, log_path)
            status, body = post_user(base)
            if status != 201:
                raise CheckFailed(f"POST /api/users: {status} {body}\n{log_path.read_text()}")
            print(f"   ok: POST /api/users -> 201 {body[:100].strip()}...")
            queued = queue_depths(node.amqp_url)
            if any(depth != 1 for depth in queued.values()):
                raise CheckFailed(f"expected one job per queue, found {queued}")
            print(f"   ok: one job on each queue {queued}")
        finally:
            stop_process(web)


def wait_until_serving(base: str, web: subprocess.Popen[bytes], log_path: Path) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if web.poll() is not None:
            raise CheckFailed(f"offload-web exited {web.returncode}\n{log_path.read_text()}")
        with contextlib.suppress(requests.RequestException):
            if requests.get(f"{base}/healthz", timeout=2).status_code == 200:
                return
        time.sleep(0.2)
    raise CheckFailed(f"offload-web did not answer within 30s\n{log_path.read_text()}")


def post_user(base: str) -> tuple[int, str]:
    data = {"name": "Ada Lovelace", "email": "ada@example.com", "phone": "+44 7911 123456"}
    response = requests.post(f"{base}/api/users", json=data, timeout=30)
    return response.status_code, response.text


def queue_depths(amqp_url: str) -> dict[str, int]:
    import pika

    connection = pika.BlockingConnection(pika.URLParameters(amqp_url))
    try:
        channel = connection.channel()
        return {
            work_queue(name): channel.queue_declare(
                work_queue(name), passive=True
            ).method.message_count
            for name in CHANNELS
        }
    finally:
        connection.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    args = parser.parse_args(argv)
    started = time.monotonic()
    work = Path(tempfile.mkdtemp(prefix="offload-wheel-"))
    run_dir = work / "run"
    run_dir.mkdir()
    try:
        wheel = build_wheel(work)
        scripts = inspect_wheel(wheel)
        bin_dir = install(work, wheel)
        check_isolation(bin_dir, run_dir)
        check_scripts(bin_dir, scripts, run_dir)
        database = check_migrate(bin_dir, run_dir)
        check_registration(bin_dir, run_dir, database, work)
    except (CheckFailed, subprocess.TimeoutExpired) as exc:
        print(f"wheel check FAILED: {exc}", file=sys.stderr)
        return 1
    finally:
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    print(f"wheel check passed in {time.monotonic() - started:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
