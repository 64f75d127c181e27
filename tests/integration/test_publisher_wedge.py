"""A publish whose time budget runs out while the publisher is connecting must not wedge it.

The black hole (a listening socket that accepts and never answers) makes the budget fire in the
middle of connecting; once the broker is reachable again, publishes must be confirmed.
"""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from devstack import PROJECT_ROOT

pytestmark = pytest.mark.integration

SCRIPT = Path(__file__).with_name("publisher_wedge_script.py")


def test_publisher_recovers_after_a_black_holed_broker(stack):
    assert stack.node is not None
    vhost = f"wedge-{uuid.uuid4().hex[:8]}"
    assert stack.node.ctl("add_vhost", vhost).returncode == 0
    assert stack.node.ctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*").returncode == 0
    broker = urlsplit(stack.amqp_url)
    try:
        run = subprocess.run(
            [sys.executable, str(SCRIPT), broker.hostname, str(broker.port), vhost],
            cwd=PROJECT_ROOT,
            capture_output=True,
            text=True,
            timeout=120,
        )
    finally:
        stack.node.ctl("delete_vhost", vhost)
    assert run.returncode == 0, run.stderr[-2000:]
    seen = json.loads(run.stdout.strip().splitlines()[-1])
    # While black-holed every publish gives up within its budget, falling to the relay.
    assert all(outcome != "confirmed" for outcome in seen["while_black_holed"]), seen
    assert seen["after"][-1] == "confirmed", seen
