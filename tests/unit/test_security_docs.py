"""docs/security.md and the README say what the code does where it matters to an operator."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SECURITY = (ROOT / "docs" / "security.md").read_text()
README = (ROOT / "README.md").read_text()


def test_both_say_the_rate_limiter_fails_open():
    assert "fails open" in SECURITY
    assert "fails open" in README.split("## Security", 1)[1]


def test_the_threat_table_has_four_columns_and_names_tests_that_exist():
    section = SECURITY.split("## Threats, controls and the tests that show them", 1)[1]
    rows = [line for line in section.split("\n## ", 1)[0].splitlines() if line.startswith("|")]
    assert rows[0] == "| asset | threat | control | test |"
    for row in rows[2:]:
        cells = [cell.strip() for cell in row.strip("|").split("|")]
        assert len(cells) == 4 and all(cells), row
        for path in re.findall(r"`(tests/[^`]+\.py)`", cells[3]):
            assert (ROOT / path).exists(), path
