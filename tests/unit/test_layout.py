"""The layout's promises, checked: the workers run without Flask."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from devstack import PROJECT_ROOT
from tests.fresh_process import run_python

WORKER_ENTRY_POINTS = ["services.workers", "services.parked", "app.migrate"]


@pytest.mark.parametrize("module", WORKER_ENTRY_POINTS)
def test_worker_entry_points_never_import_flask(module: str) -> None:
    # A fresh interpreter: this test process has imported Flask long ago.
    probe = (
        f"import importlib, sys; importlib.import_module({module!r}); "
        "leaked = sorted(m for m in sys.modules if m.split('.')[0] in {'flask', 'flask_wtf'}); "
        "print(','.join(leaked))"
    )
    result = run_python(probe)
    assert result.stdout.strip() == "", f"{module} imported {result.stdout.strip()}"


def test_the_probe_sees_flask_when_it_is_imported() -> None:
    # The check above would pass vacuously if the probe could not see Flask at all.
    result = run_python("import app.web, sys; print('flask' in sys.modules)")
    assert result.stdout.strip() == "True"


def test_gunicorn_refuses_a_bad_setting_with_the_one_line_error() -> None:
    # gunicorn reads gunicorn.conf.py before any worker exists: a bad value must stop it there
    # with the same message `python wsgi.py` gives, not a traceback.
    gunicorn = Path(sys.executable).with_name("gunicorn")
    result = subprocess.run(
        [str(gunicorn), "--config", "gunicorn.conf.py", "wsgi:app"],
        cwd=PROJECT_ROOT,
        env={**os.environ, "PORT": "abc"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert result.stderr == "configuration error: PORT must be a whole number, not 'abc'\n"
