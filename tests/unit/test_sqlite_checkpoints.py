"""SQLite's checkpoints run on a thread of their own in a serving process, never inside a commit
on its event loop (app.db.checkpoint_off_the_loop).

By default the commit that finds the write-ahead log past 1,000 pages copies it into the
database file, fsyncs included: under gunicorn at 50 concurrent registrations the group
writer's commit took 5-15 ms over a hundred times in 25 s, the whole process waiting each time.
"""

from __future__ import annotations

import time
from pathlib import Path

from sqlalchemy import text

from app.db import checkpoint_off_the_loop, make_engine
from tests.fresh_process import run_python


def autocheckpoint(engine) -> int:
    with engine.connect() as connection:
        return connection.exec_driver_sql("PRAGMA wal_autocheckpoint").scalar_one()


def test_a_serving_engines_commits_never_checkpoint(tmp_path: Path):
    engine = make_engine(f"sqlite:///{tmp_path / 'a.db'}")
    assert autocheckpoint(engine) == 1000  # SQLite's default: the commit past 1,000 pages
    checkpoint_off_the_loop(engine)
    assert autocheckpoint(engine) == 0  # the connection made before went with dispose()


def test_the_log_reaches_the_database_file_without_any_commit_copying_it(tmp_path: Path):
    path = tmp_path / "b.db"
    engine = make_engine(f"sqlite:///{path}")
    checkpoint_off_the_loop(engine)
    with engine.begin() as connection:
        connection.execute(text("CREATE TABLE t (x TEXT)"))
        connection.execute(text("INSERT INTO t VALUES (:x)"), [{"x": "y" * 1000}] * 2000)
    # 2 MB went into the log; the thread copies it into the database file within a turn or two.
    deadline = time.monotonic() + 10
    while path.stat().st_size < 2_000_000 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert path.stat().st_size >= 2_000_000
    with engine.connect() as connection:
        assert connection.execute(text("SELECT count(*) FROM t")).scalar_one() == 2000


def test_the_workers_engines_checkpoint_off_the_loop(tmp_path: Path):
    # In a process of its own: importing services.workers patches this one with gevent.
    probe = (
        "from app.config import Settings; from services.workers import serving_engine; "
        f"engine = serving_engine(Settings(database_url='sqlite:///{tmp_path / 'c.db'}', "
        "secret_key='x' * 40)); "
        "print(engine.connect().exec_driver_sql('PRAGMA wal_autocheckpoint').scalar_one())"
    )
    result = run_python(probe)
    assert result.stdout.split()[-1] == "0"


def test_nothing_changes_for_an_in_memory_database():
    engine = make_engine("sqlite://")
    checkpoint_off_the_loop(engine)
    assert autocheckpoint(engine) == 1000
