"""The Procfile's web line: gunicorn with gevent workers, each opening its own broker connection
after the fork, serves registrations whose jobs reach the sinks."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest
import requests
from sqlalchemy import create_engine, select
from sqlalchemy.orm import Session

from app.events import REQUEST_HOLDER
from app.models import Event, Notification
from devstack import PROJECT_ROOT
from devstack.ports import free_port
from tests.integration.helpers import assert_delivered_once, register

pytestmark = pytest.mark.integration


def test_gunicorn_gevent_workers_publish_after_fork(stack):
    port = free_port()
    env = {**stack.environment(), "PORT": str(port), "WEB_WORKERS": "2"}
    gunicorn = os.path.join(os.path.dirname(sys.executable), "gunicorn")
    process = subprocess.Popen(
        [gunicorn, "--config", "gunicorn.conf.py", "wsgi:app"],
        cwd=PROJECT_ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    base_url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            assert process.poll() is None, process.stderr.read().decode() if process.stderr else ""
            try:
                if requests.get(f"{base_url}/readyz", timeout=2).status_code == 200:
                    break
            except requests.RequestException:
                pass
            assert time.monotonic() < deadline, "gunicorn did not become ready"
            time.sleep(0.2)
        with requests.Session() as http:
            users = [register(base_url, "queued", session=http)["user"] for _ in range(20)]
        # The answers do not wait for the broker's confirms (the outbox rows are the guarantee):
        # each says `pending`, or `queued` if the confirm beat the response.
        statuses = [n["status"] for u in users for n in u["notifications"]]
        assert len(statuses) == 2 * len(users)
        assert set(statuses) <= {"pending", "queued"}, statuses
        assert_delivered_once(stack, users, timeout=60)
        # And the relay never had to step in: a registration's event the request publishes
        # keeps the request's `claimed_by`; one the relay took over carries the relay's id, and
        # a row the relay published as a job keeps its own `claimed_by`.
        assert_published_by_their_requests(stack.database_url, [u["id"] for u in users])
    finally:
        process.terminate()
        assert process.wait(timeout=30) == 0


def assert_published_by_their_requests(database_url: str, user_ids: list[str]) -> None:
    engine = create_engine(database_url)
    try:
        with Session(engine) as session:
            rows = session.scalars(
                select(Notification).where(Notification.user_id.in_(user_ids))
            ).all()
            relayed_jobs = [n.id for n in rows if n.claimed_by is not None]
            events = session.scalars(
                select(Event).where(Event.id.in_({n.event_id for n in rows}))
            ).all()
    finally:
        engine.dispose()
    assert len(rows) == 2 * len(user_ids) and len(events) == len(user_ids)
    holders = [event.claimed_by for event in events]
    relayed = [holder for holder in holders if holder != REQUEST_HOLDER]
    assert relayed == [], f"{len(relayed)} of {len(events)} events were published by the relay"
    assert relayed_jobs == [], f"{len(relayed_jobs)} rows were published by the relay as jobs"
