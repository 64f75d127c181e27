"""pg8000 rewrites a statement's placeholders once per statement (app/db.py), exactly as it
would itself on every execute."""

from __future__ import annotations

import pg8000.dbapi
import pg8000.legacy
import pytest

from app import db

STATEMENTS = [
    "SELECT 1",
    "INSERT INTO users (id, email) VALUES (%s, %s) ON CONFLICT DO NOTHING RETURNING users.id",
    "SELECT '%s' || %s, \"odd%\" FROM t -- a %s in a comment\nWHERE x = %s",
    "SELECT 100 %% %s, $$ %s $$, E'it''s %s', %s",
]


@pytest.mark.parametrize("statement", STATEMENTS)
def test_the_rewrite_is_pg8000s_own(statement):
    args = (1, "two", None)
    assert db._convert_paramstyle_once("format", statement, args) == (
        pg8000.dbapi.convert_paramstyle("format", statement, args)
    )


def test_a_statement_executed_again_is_not_scanned_again(monkeypatch):
    scanned: list[str] = []
    original = db._pg8000_convert_paramstyle

    def counting(style, query, args):
        scanned.append(query)
        return original(style, query, args)

    monkeypatch.setattr(db, "_pg8000_convert_paramstyle", counting)
    db._rewritten_sql.cache_clear()
    statement = "UPDATE notifications SET status = %s WHERE id = %s"
    for value in ("sent", "failed", "sent"):
        # The name pg8000's cursor calls: app/db.py put the once-per-statement rewrite there.
        assert pg8000.legacy.convert_paramstyle("format", statement, (value, "n1")) == (
            "UPDATE notifications SET status = $1 WHERE id = $2",
            (value, "n1"),
        )
    assert scanned == [statement]


def test_a_named_style_still_goes_through_pg8000_each_time():
    # Its parameters are picked out of a mapping by the names the scan finds.
    statement = "SELECT :a, :b, :a"
    assert db._convert_paramstyle_once("named", statement, {"a": 1, "b": 2}) == (
        "SELECT $1, $2, $1",
        (1, 2),
    )
