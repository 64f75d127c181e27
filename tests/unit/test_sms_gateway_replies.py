"""What the SMS sender keeps of a gateway's refusal: its Retry-After, and no number or code."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from app.jobs import SmsJob
from app.senders import PermanentSendError, TransientSendError
from services.sms import HttpSmsSender

JOB = SmsJob(
    notification_id="n1",
    to="+447911123456",
    body="Your Offload verification code is 428193. It expires in 15 minutes.",
)


class Gateway(BaseHTTPRequestHandler):
    status = 429
    headers_out: dict[str, str] = {}
    stall_seconds = 0.0
    # A request this large is left unread for a while: the sender's write fills the socket
    # buffers and blocks, as towards a gateway that stopped reading.
    unread_above_bytes = 1 << 20
    unread_seconds = 1.0

    def do_POST(self) -> None:
        if int(self.headers["Content-Length"]) > self.unread_above_bytes:
            time.sleep(self.unread_seconds)
            self.close_connection = True
            return
        payload = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        time.sleep(self.stall_seconds)
        # Gateways echo what they were sent: the number (with and without +) and the text.
        reply = json.dumps(
            {
                "error": "refused",
                "to": payload["to"],
                "msisdn": payload["to"][1:],
                "text": payload["body"],
            }
        ).encode()
        self.send_response(self.status)
        for name, value in self.headers_out.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def gateway() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Gateway)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/messages"
    server.shutdown()
    server.server_close()


def assert_masked(detail: str) -> None:
    assert "447911123456" not in detail
    assert "428193" not in detail


def test_429_retry_after_is_kept_and_the_reply_masked(gateway):
    Gateway.status, Gateway.headers_out = 429, {"Retry-After": "7"}
    with pytest.raises(TransientSendError) as caught:
        HttpSmsSender(gateway, timeout=5).send(JOB)
    assert caught.value.retry_after_ms == 7000
    assert "429" in str(caught.value)
    assert_masked(str(caught.value))


def test_a_permanent_refusal_is_stored_masked(gateway):
    Gateway.status, Gateway.headers_out = 400, {}
    with pytest.raises(PermanentSendError) as caught:
        HttpSmsSender(gateway, timeout=5).send(JOB)
    assert "400" in str(caught.value)
    assert_masked(str(caught.value))


def test_a_send_cut_by_its_deadline_does_not_keep_the_only_connection(gateway):
    sender = HttpSmsSender(gateway, timeout=0.3, max_connections=1)
    Gateway.status, Gateway.headers_out, Gateway.stall_seconds = 200, {}, 1.0
    try:
        with pytest.raises(TransientSendError, match="unreachable"):
            sender.send(JOB)
    finally:
        Gateway.stall_seconds = 0.0
    # Cut while waiting for the reply: the connection was given back (and closed), so the
    # next send gets a new one instead of waiting out its deadline for the old.
    sender.send(JOB)


def test_a_send_cut_by_its_deadline_while_writing_does_not_keep_the_only_connection(gateway):
    # Cut while the request is still being written, the client leaves the connection checked
    # out of its pool (it gives it back only on socket errors): the sender starts a new pool.
    sender = HttpSmsSender(gateway, timeout=0.3, max_connections=1)
    Gateway.status, Gateway.headers_out = 200, {}
    too_big_to_be_read = SmsJob(notification_id="n2", to=JOB.to, body="x" * (64 << 20))
    with pytest.raises(TransientSendError, match="unreachable"):
        sender.send(too_big_to_be_read)
    sender.send(JOB)
