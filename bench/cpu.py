"""Where the CPU goes: user + system time per part of the stack, read from /proc (Linux).

On a small machine every part shares the same cores: the consumers sending queued jobs take CPU
from the web server, and so does anything else running at the time. Sampling each part's CPU
time around a slice turns that into figures (ms of CPU per request per part) and shows how busy
the machine was, ours or not. The scheduler's own account of the web's serving threads
(`/proc/PID/schedstat`) says what the web did meanwhile: ran, waited for a core, or slept
(waiting for the database, the clients, the broker). Where /proc is missing (macOS) the figures
are simply absent.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

PROC = Path("/proc")


def available() -> bool:
    return (PROC / "stat").is_file()


def _ticks_per_second() -> int:
    return int(os.sysconf("SC_CLK_TCK"))


def _process_table() -> dict[int, tuple[int, int]]:
    """pid -> (parent pid, user + system ticks) for every process we can read."""
    table: dict[int, tuple[int, int]] = {}
    for entry in PROC.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            raw = (entry / "stat").read_text()
        except OSError:
            continue  # it exited while we looked
        # The command name is in parentheses and may itself hold spaces or parentheses.
        fields = raw[raw.rindex(")") + 2 :].split()
        table[int(entry.name)] = (int(fields[1]), int(fields[11]) + int(fields[12]))
    return table


def _children(table: dict[int, tuple[int, int]]) -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for pid, (parent, _ticks) in table.items():
        children.setdefault(parent, []).append(pid)
    return children


def _tree(
    roots: list[int], table: dict[int, tuple[int, int]], children: dict[int, list[int]]
) -> list[int]:
    """`roots` and all their descendants that are still running, each once."""
    found, stack, seen = [], list(roots), set()
    while stack:
        pid = stack.pop()
        if pid in seen or pid not in table:
            continue
        seen.add(pid)
        found.append(pid)
        stack.extend(children.get(pid, []))
    return found


def _machine_ticks() -> tuple[int, int, int]:
    """(process time, interrupts + steal, total) ticks of all CPUs since boot.

    /proc/stat's first line: user nice system idle iowait irq softirq steal (guest time is
    already inside user). Interrupt handling (much of it loopback networking) and time the
    hypervisor gave to other machines (steal) belong to no process.
    """
    values = [int(v) for v in (PROC / "stat").read_text().split("\n", 1)[0].split()[1:9]]
    values += [0] * (8 - len(values))
    user, nice, system, _idle, _iowait, irq, softirq, steal = values
    return user + nice + system, irq + softirq + steal, sum(values)


@dataclass
class CpuSample:
    seconds: dict[str, float] = field(default_factory=dict)  # part -> CPU seconds so far
    machine_processes: float = 0.0  # CPU seconds of all processes, ours or not
    machine_kernel: float = 0.0  # interrupts and steal: CPU seconds that belong to no process
    machine_total: float = 0.0  # all CPU seconds, idle included


def sample(parts: Mapping[str, list[int]]) -> CpuSample | None:
    """CPU seconds used so far by each part (its processes and all their descendants)."""
    if not available():
        return None
    table = _process_table()
    children = _children(table)
    ticks = _ticks_per_second()
    result = CpuSample()
    for part, roots in parts.items():
        result.seconds[part] = sum(table[pid][1] for pid in _tree(roots, table, children)) / ticks
    processes, kernel, total = _machine_ticks()
    result.machine_processes = processes / ticks
    result.machine_kernel = kernel / ticks
    result.machine_total = total / ticks
    return result


def difference(before: CpuSample | None, after: CpuSample | None) -> CpuSample | None:
    if before is None or after is None:
        return None
    return CpuSample(
        {part: after.seconds[part] - before.seconds.get(part, 0.0) for part in after.seconds},
        after.machine_processes - before.machine_processes,
        after.machine_kernel - before.machine_kernel,
        after.machine_total - before.machine_total,
    )


@dataclass
class SchedSample:
    """What the scheduler says of the serving processes' main threads so far."""

    # pid -> (seconds on a CPU, seconds runnable but waiting for one), since the thread began
    threads: dict[int, tuple[float, float]] = field(default_factory=dict)
    at: float = 0.0  # time.monotonic() of the sample


def sched_sample(roots: list[int], now: float) -> SchedSample | None:
    """The main threads of the processes that serve: `roots` and their descendants that have
    no children themselves (`python wsgi.py` itself; gunicorn's workers, not its arbiter).

    `/proc/PID/schedstat` holds the task's time on a CPU and its time waiting on a run queue,
    in nanoseconds (Linux with CONFIG_SCHED_INFO, as Debian's kernels are built); the rest of
    the wall-clock time the thread slept. Python runs a process's requests on its main thread
    (gevent's hub and greenlets live there), so its three shares are the web's.
    """
    if not available():
        return None
    table = _process_table()
    children = _children(table)
    serving = [pid for pid in _tree(roots, table, children) if pid not in children]
    result = SchedSample(at=now)
    for pid in serving:
        try:
            running_ns, waiting_ns = (PROC / str(pid) / "schedstat").read_text().split()[:2]
        except (OSError, ValueError):
            continue  # gone, or a kernel without schedstat
        result.threads[pid] = (int(running_ns) / 1e9, int(waiting_ns) / 1e9)
    return result if result.threads else None


def sched_difference(
    before: SchedSample | None, after: SchedSample | None
) -> dict[str, float] | None:
    """Seconds the serving threads ran and waited for a CPU between two samples, and the
    thread-seconds the samples span (the wall-clock time, once per thread present in both)."""
    if before is None or after is None:
        return None
    common = before.threads.keys() & after.threads.keys()
    span = after.at - before.at
    if not common or span <= 0:
        return None
    return {
        "running": sum(after.threads[p][0] - before.threads[p][0] for p in common),
        "waiting": sum(after.threads[p][1] - before.threads[p][1] for p in common),
        "span": span * len(common),
    }
