"""The README's configuration table names every variable the settings read, and no other."""

import re

from app.config import _VARIABLES
from devstack import PROJECT_ROOT

README = PROJECT_ROOT / "README.md"


def documented_variables() -> set[str]:
    section = README.read_text().split("## Configuration", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| `")]
    return {name for row in rows for name in re.findall(r"`([A-Z][A-Z0-9_]+)`", row.split("|")[1])}


def test_every_setting_is_documented():
    assert set(_VARIABLES) - documented_variables() == set()


def test_nothing_undocumented_is_claimed():
    assert documented_variables() - set(_VARIABLES) == set()
