"""Python code run in a fresh interpreter, for what only a new process shows: the modules an
entry point imports, what a signal does to it, a priority or a setting applied once at start.
The test process itself has long imported everything and cannot show any of that."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Sequence
from typing import Any

from devstack import PROJECT_ROOT


def run_python(
    code: str,
    *args: str,
    interpreter_flags: Sequence[str] = (),
    check: bool = True,
    **options: Any,
) -> subprocess.CompletedProcess[str]:
    """Run `python -c code args` from the project's root, its output captured as text, within
    a minute. With `check`, a child that fails fails the test with the child's stderr (a
    CalledProcessError would show only its exit status)."""
    result = subprocess.run(
        [sys.executable, *interpreter_flags, "-c", code, *args],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        **options,
    )
    if check:
        assert result.returncode == 0, result.stderr
    return result
