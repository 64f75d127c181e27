"""py-spy flame graphs of the web and the email consumer under the c=50 queued load.

    python -m bench --flame docs/        # docs/flame-web.svg, docs/flame-consumer-email.svg

The stack starts as for a run (`python wsgi.py`, consumers, relay, sinks at --delay-ms), one
unrecorded queued slice warms it, then queued load runs at the highest --concurrency level while
py-spy samples both processes for --flame-duration seconds. Only samples of the thread holding
the GIL are kept (py-spy --gil, without --idle), so the width of a frame is its share of the
process's Python CPU time.

py-spy is not a dependency of the project: `.venv/bin/pip install py-spy`. It reads the other
processes' memory with ptrace, so it needs root or CAP_SYS_PTRACE (or ptrace_scope 0).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from bench.runner import BenchOptions, BenchSession, Progress, prepare_run_dir, stack_config

if TYPE_CHECKING:
    from devstack.stack import Stack

PROFILED = {"web": "flame-web.svg", "email": "flame-consumer-email.svg"}
SAMPLES_PER_SECOND = 100


class FlameError(RuntimeError):
    """py-spy is missing or failed; the message says what to do."""


def find_py_spy() -> str:
    beside = Path(sys.executable).parent / "py-spy"
    found = str(beside) if beside.exists() else shutil.which("py-spy")
    if not found:
        raise FlameError("py-spy is not installed: .venv/bin/pip install py-spy")
    return found


def record_flame_graphs(
    options: BenchOptions, out: Path, duration: float, progress: Progress
) -> list[Path]:
    """Profile the web and the email consumer under queued load; return the SVGs written."""
    from bench.driver import LoadGenerator
    from bench.queues import QueueDepthPoller
    from devstack.stack import Stack

    py_spy = find_py_spy()
    out.mkdir(parents=True, exist_ok=True)
    prepare_run_dir(options.run_dir)
    level = max(options.concurrency)
    stack = Stack(stack_config(options))
    with stack:
        poller = QueueDepthPoller(stack.amqp_url).start()
        try:
            with LoadGenerator(stack.log_dir / "loadgen.log") as loadgen:
                session = BenchSession(stack, loadgen, poller, options, progress)
                try:
                    progress(f"flame: warming up (queued, c={level})")
                    session.run_slice("queued", level, 2.0)
                    session.wait_idle()
                    recorders = {
                        name: start_recorder(py_spy, stack, name, out / svg, duration)
                        for name, svg in PROFILED.items()
                    }
                    time.sleep(0.5)  # py-spy attaches before the load starts
                    progress(f"flame: recording {duration:g}s of queued load at c={level}")
                    # Load a little longer than the recording, so every sample is under load.
                    session.load(session.spec("queued", level, warmup=0.0, duration=duration + 1.0))
                    written = [finish_recorder(name, *recorders[name]) for name in PROFILED]
                    session.wait_idle()
                finally:
                    session.close()
        finally:
            poller.stop()
    return written


def start_recorder(
    py_spy: str, stack: Stack, name: str, svg: Path, duration: float
) -> tuple[subprocess.Popen[bytes], Path, Path]:
    log = stack.log_dir / f"py-spy-{name}.log"
    with open(log, "wb") as output:
        process = subprocess.Popen(
            [
                py_spy,
                "record",
                "--pid",
                str(stack.processes[name].pid),
                "--duration",
                str(max(int(duration), 1)),
                "--rate",
                str(SAMPLES_PER_SECOND),
                # Only the thread holding the GIL: gevent's monitor thread (asleep) and the hub
                # waiting in epoll would otherwise show as wide towers of no work.
                "--gil",
                "--format",
                "flamegraph",
                "--output",
                str(svg),
            ],
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    return process, svg, log


def finish_recorder(name: str, process: subprocess.Popen[bytes], svg: Path, log: Path) -> Path:
    try:
        process.wait(timeout=60)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
    if process.returncode != 0 or not svg.exists():
        raise FlameError(f"py-spy failed on the {name} process; see {log}")
    svg.write_text(titled(svg.read_text(), name))
    return svg


_TITLE = re.compile(r'(<text id="title"[^>]*>)[^<]*(</text>)')


def titled(svg: str, name: str) -> str:
    """The graph titled with what it shows: py-spy puts its own command line there, with the
    paths of this machine (its executable, the output file) and a process id of this run."""
    title = f"py-spy record --gil --rate {SAMPLES_PER_SECOND}: the {name} process under queued load"
    return _TITLE.sub(lambda match: f"{match[1]}{title}{match[2]}", svg, count=1)
