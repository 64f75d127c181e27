"""`python wsgi.py` keeps accepting while idle connections fill its whole greenlet pool."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import pytest
import requests

from devstack import PROJECT_ROOT
from devstack.ports import free_port

pytestmark = pytest.mark.integration

POOL = 20


def test_idle_connections_cannot_stop_the_server_accepting(database_url):
    port = free_port()
    env = {
        **os.environ,
        "PORT": str(port),
        "DATABASE_URL": database_url,
        "WEB_POOL_SIZE": str(POOL),
        "WEB_IDLE_TIMEOUT": "1",
        "WEB_HEADER_TIMEOUT": "1",
        "AMQP_URL": f"amqp://guest:guest@127.0.0.1:{free_port()}/%2F",
        "LOG_LEVEL": "WARNING",
    }
    web = subprocess.Popen([sys.executable, "wsgi.py"], cwd=PROJECT_ROOT, env=env)
    idle: list[socket.socket] = []
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                requests.get(f"http://127.0.0.1:{port}/healthz", timeout=2)
                break
            except requests.RequestException:
                assert web.poll() is None and time.monotonic() < deadline, "wsgi.py did not start"
                time.sleep(0.1)
        # More connections than greenlets: some say nothing, some trickle a header.
        for n in range(POOL * 3):
            conn = socket.create_connection(("127.0.0.1", port))
            if n % 2:
                conn.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ")
            idle.append(conn)
        response = requests.get(f"http://127.0.0.1:{port}/healthz", timeout=60)
        assert response.status_code == 200
        # The idle ones were closed by the server (the slow-header ones after a 400).
        for conn in idle:
            conn.settimeout(60)
            while conn.recv(4096):
                pass
    finally:
        for conn in idle:
            conn.close()
        web.send_signal(signal.SIGTERM)
        try:
            web.wait(timeout=20)
        except subprocess.TimeoutExpired:
            web.kill()
            web.wait()
