"""The console scripts an operator runs: each is installed, answers `--help`, and turns a bad
setting into the one-line error with status 2 (never a traceback).

They run as installed (`make deps` installs them), from a folder outside the repository. The
wheel itself is checked end to end by `make wheel-check` (scripts/wheel_check.py).
"""

from __future__ import annotations

import os
import subprocess
import sysconfig
import tomllib
from importlib.metadata import distribution
from pathlib import Path

import pytest

from devstack import PROJECT_ROOT

OPERATOR_SCRIPTS = {
    "offload-web": "wsgi:main",
    "offload-migrate": "app.migrate:main",
    "offload-email": "services.workers:email_main",
    "offload-sms": "services.workers:sms_main",
    "offload-relay": "services.workers:relay_main",
    "offload-webhooks": "services.workers:webhooks_main",
    "offload-parked": "services.parked:main",
}
# Arguments a script needs before it reads the settings.
REQUIRED_ARGS = {"offload-parked": ["list"]}


def declared_scripts() -> dict[str, str]:
    with open(PROJECT_ROOT / "pyproject.toml", "rb") as file:
        scripts: dict[str, str] = tomllib.load(file)["project"]["scripts"]
    return scripts


def installed(name: str) -> Path:
    path = Path(sysconfig.get_path("scripts")) / name
    assert path.exists(), f"{name} is not installed: run `make deps`"
    return path


def test_every_operator_process_has_a_console_script() -> None:
    assert declared_scripts() == OPERATOR_SCRIPTS


def test_the_installed_scripts_are_the_declared_ones() -> None:
    entry_points = distribution("offload").entry_points.select(group="console_scripts")
    assert {ep.name: ep.value for ep in entry_points} == OPERATOR_SCRIPTS, "run `make deps`"


@pytest.mark.parametrize("name", sorted(OPERATOR_SCRIPTS))
def test_help(name: str, tmp_path: Path) -> None:
    result = subprocess.run(
        [installed(name), "--help"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"usage: {name}")


@pytest.mark.parametrize("name", sorted(OPERATOR_SCRIPTS))
def test_a_bad_setting_is_one_line_and_status_2(name: str, tmp_path: Path) -> None:
    env = {**os.environ, "PORT": "not-a-number", "DATABASE_URL": f"sqlite:///{tmp_path}/x.db"}
    result = subprocess.run(
        [installed(name), *REQUIRED_ARGS.get(name, [])],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2, result.stderr
    assert result.stderr == "configuration error: PORT must be a whole number, not 'not-a-number'\n"
    assert not (tmp_path / "x.db").exists(), "it read the settings after opening the database"
