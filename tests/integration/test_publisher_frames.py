"""The web's publisher hands the broker what one turn of the hub published as one write.

A message is three AMQP frames (method, header, body), and pika's transport sends each frame
with a `send` of its own: three system calls per message for the web and the relay, and three
TCP segments for the broker to read apart.
"""

from __future__ import annotations

import uuid
from typing import Any

import gevent
import pytest
from pika.adapters.utils.io_services_utils import _AsyncTransportBase

from app.jobs import EmailJob
from app.messaging import PikaPublisher

pytestmark = pytest.mark.integration

DELAYS = (2000,)


def test_the_messages_of_one_turn_leave_in_one_send(stack: Any, monkeypatch: Any) -> None:
    # A virtual host of its own: the stack's consumers never see these jobs.
    vhost = f"frames-{uuid.uuid4().hex[:8]}"
    assert stack.node.ctl("add_vhost", vhost).returncode == 0
    assert stack.node.ctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*").returncode == 0
    url = stack.amqp_url.rsplit("/", 1)[0] + f"/{vhost}"
    publisher = PikaPublisher(url, retry_delays_ms=DELAYS)
    try:
        gevent.spawn(publisher.check, timeout=10).get(timeout=15)

        sent: list[bytes] = []
        send = _AsyncTransportBase._sigint_safe_send

        def counting_send(sock: Any, data: bytes) -> int:
            sent.append(bytes(data))
            return send(sock, data)

        monkeypatch.setattr(_AsyncTransportBase, "_sigint_safe_send", staticmethod(counting_send))
        jobs = [
            EmailJob(notification_id=f"n{i}", to=f"u{i}@example.com", subject="s", text="t")
            for i in range(3)
        ]
        # Waits for the broker's confirms, so every frame has gone out by then.
        gevent.spawn(publisher.publish, jobs, timeout=10).get(timeout=15)
        monkeypatch.undo()

        assert len(sent) == 1, f"{len(sent)} sends for 3 messages (9 frames)"
        assert all(job.notification_id.encode() in sent[0] for job in jobs)
    finally:
        publisher.close()
        stack.node.ctl("delete_vhost", vhost)
