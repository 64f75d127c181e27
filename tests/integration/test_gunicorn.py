"""The Procfile's web line: gunicorn with gevent workers, each opening its own broker connection
after the fork, serves registrations whose jobs reach the sinks."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest
import requests

from devstack import PROJECT_ROOT
from devstack.sinks.process import free_port
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
        # Jobs confirmed by the broker inside the request (`queued`, not left to the relay as
        # `pending`): the workers' own connections work.
        statuses = [n["status"] for u in users for n in u["notifications"]]
        assert statuses.count("queued") >= len(statuses) // 2, statuses
        assert_delivered_once(stack, users, timeout=60)
    finally:
        process.terminate()
        assert process.wait(timeout=30) == 0
