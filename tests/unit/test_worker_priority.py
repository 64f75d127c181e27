"""WORKER_NICE: a worker yields the CPU to the web, also from a session of its own.

Linux weighs a process's nice value only against the processes of its autogroup (one per
session). `make run` and the bench start every process in a session of its own, so a worker
that lowered only its own nice value still competed with the web as an equal group.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.fresh_process import run_python

AUTOGROUP = Path("/proc/self/autogroup")

pytestmark = pytest.mark.skipif(
    not AUTOGROUP.exists(), reason="no scheduler autogroups here (not Linux, or built without)"
)

# Reports the nice value of the process and the text of its autogroup after WORKER_NICE is
# applied ("/autogroup-66 nice 7"). A process in the session that booted the machine or the
# container is in no autogroup of its own, and the file is empty: CI runs there.
PROBE = """
import os, sys
from services.workers import yield_cpu_to_the_web
yield_cpu_to_the_web(int(sys.argv[1]))
print(os.nice(0))
print(open("/proc/self/autogroup").read(), end="")
"""


def group_nice(autogroup_text: str) -> int | None:
    """The autogroup's nice value, or None for a process in no autogroup (an empty file)."""
    fields = autogroup_text.split()
    return int(fields[-1]) if fields else None


def test_no_autogroup_reads_as_none():
    assert group_nice("") is None
    assert group_nice("/autogroup-66 nice 7\n") == 7


def run_probe(nicer_by: int, *, own_session: bool) -> tuple[int, int | None]:
    result = run_python(PROBE, str(nicer_by), start_new_session=own_session)
    process_nice, _, autogroup_text = result.stdout.partition("\n")
    return int(process_nice), group_nice(autogroup_text)


def test_a_worker_leading_its_own_session_lowers_its_autogroup_too():
    assert run_probe(7, own_session=True) == (os.nice(0) + 7, 7)


def test_a_worker_in_a_shared_session_leaves_the_group_alone():
    # The session may hold the web (one terminal, one supervisor without setsid): lowering
    # the group would lower the web with the worker.
    before = group_nice(AUTOGROUP.read_text())
    assert run_probe(7, own_session=False) == (os.nice(0) + 7, before)


def test_worker_nice_zero_changes_nothing():
    assert run_probe(0, own_session=True) == (os.nice(0), 0)
