"""Settings are read once, in `app/config.py`: every other module may copy the environment whole
for a child process (`dict(os.environ)`, `os.environ.copy()`, `{**os.environ, ...}`), and read
nothing from it."""

from __future__ import annotations

import ast
import subprocess
from pathlib import Path

import pytest

from app.config import ConfigError, load_settings, variables_set
from devstack import PROJECT_ROOT

THE_READER = Path("app/config.py")
# The test suite's own switch (fail, not skip, what needs a missing tool), no setting of the app.
ALLOWED = {(Path("tests/conftest.py"), "CI"), (Path("scripts/wheel_check.py"), "CI")}


def python_files() -> list[Path]:
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "*.py"],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    return [Path(name) for name in listed if (PROJECT_ROOT / name).exists()]


def environment_reads(source: str) -> list[tuple[int, str | None]]:
    """(line, variable or None) for each use of the environment other than a whole copy."""
    tree = ast.parse(source)
    parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
    # Names bound by `from os import environ, getenv` (under any alias).
    imported = {
        alias.asname or alias.name
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and node.module == "os"
        for alias in node.names
        if alias.name in {"environ", "environb", "getenv", "getenvb"}
    }
    reads: list[tuple[int, str | None]] = []
    for node in ast.walk(tree):
        if _is_environment(node, imported) and not _is_whole_copy(node, parents):
            reads.append((node.lineno, _variable(node, parents)))
    return reads


def _is_environment(node: ast.AST, imported: set[str]) -> bool:
    if isinstance(node, ast.Attribute):
        return (
            isinstance(node.value, ast.Name)
            and node.value.id == "os"
            and node.attr in {"environ", "environb", "getenv", "getenvb"}
        )
    return isinstance(node, ast.Name) and node.id in imported and isinstance(node.ctx, ast.Load)


def _is_whole_copy(node: ast.AST, parents: dict[ast.AST, ast.AST]) -> bool:
    parent = parents.get(node)
    # dict(os.environ)
    if (
        isinstance(parent, ast.Call)
        and isinstance(parent.func, ast.Name)
        and parent.func.id == "dict"
        and parent.args == [node]
        and not parent.keywords
    ):
        return True
    # os.environ.copy()
    if isinstance(parent, ast.Attribute) and parent.attr == "copy":
        call = parents.get(parent)
        return isinstance(call, ast.Call) and call.func is parent and not call.args
    # {**os.environ, ...}
    if isinstance(parent, ast.Dict):
        return any(
            key is None and value is node
            for key, value in zip(parent.keys, parent.values, strict=True)
        )
    return False


def _variable(node: ast.AST, parents: dict[ast.AST, ast.AST]) -> str | None:
    """The variable's name when it is a literal: os.environ["X"], .get("X"), os.getenv("X")."""
    parent = parents.get(node)
    candidates: list[ast.expr] = []
    if isinstance(parent, ast.Subscript):
        candidates = [parent.slice]
    elif isinstance(parent, ast.Call) and parent.func is node:
        candidates = parent.args[:1]
    elif isinstance(parent, ast.Attribute):
        call = parents.get(parent)
        if isinstance(call, ast.Call) and call.func is parent:
            candidates = call.args[:1]
    for candidate in candidates:
        if isinstance(candidate, ast.Constant) and isinstance(candidate.value, str):
            return candidate.value
    return None


def test_only_the_settings_read_the_environment() -> None:
    files = python_files()
    assert THE_READER in files and Path("devstack/stack.py") in files  # the listing works
    offenders = [
        f"{path}:{line} {variable or '(the environment)'}"
        for path in files
        if path != THE_READER
        for line, variable in environment_reads((PROJECT_ROOT / path).read_text())
        if (path, variable) not in ALLOWED
    ]
    assert offenders == [], "read the environment through app.config.load_settings()"


@pytest.mark.parametrize(
    "source",
    [
        "import os\nport = os.environ.get('PORT')",
        "import os\nport = os.environ['PORT']",
        "import os\nport = os.getenv('PORT', '8000')",
        "import os\nhas = 'PORT' in os.environ",
        "import os\nsettings = load(os.environ)",
        "from os import environ\nport = environ.get('PORT')",
        "from os import getenv as g\nport = g('PORT')",
        "import os\nenv = dict(os.environ, PORT='1')",
        "import os\nos.environ['PORT'] = '1'",
    ],
)
def test_a_read_is_caught(source: str) -> None:
    assert environment_reads(source)


@pytest.mark.parametrize(
    "source",
    [
        "import os\nenv = dict(os.environ)",
        "import os\nenv = os.environ.copy()",
        "import os\nenv = {**os.environ, 'PORT': '1'}",
        # a WSGI environ is not the process environment
        "def app(environ, start):\n    return environ.get('PATH_INFO')",
    ],
)
def test_a_whole_copy_is_allowed(source: str) -> None:
    assert environment_reads(source) == []


# What the harness used to read for itself, now through the settings.


def test_the_sink_delay_is_a_setting() -> None:
    assert load_settings({"SINK_DELAY_MS": "12.5"}).sink_delay_ms == 12.5
    with pytest.raises(ConfigError, match="SINK_DELAY_MS"):
        load_settings({"SINK_DELAY_MS": "-1"})


def test_the_stack_sees_which_addresses_were_given() -> None:
    given = variables_set({"AMQP_URL": "amqp://elsewhere/", "DATABASE_URL": "", "PATH": "/bin"})
    assert given == {"AMQP_URL"}
