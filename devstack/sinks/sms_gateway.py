"""The SMS gateway sink: a plain WSGI app on gevent's pywsgi that records what it accepts.

    POST /messages   {"to", "body", "idempotency_key"} (the key may come as the Idempotency-Key
                     header instead) -> 201 {"id", "duplicate": false}; a key accepted before
                     -> 200 with the first id and "duplicate": true; bad input -> 400 {"error"}
    GET  /messages   every record so far, as a JSON list
    GET  /healthz    200

Each POST waits `delay` seconds (gevent.sleep), then at `failure_rate` answers 503 without
accepting the message. Otherwise the message is accepted and recorded, and at `timeout_rate` the
answer is held back for `hang_seconds`: the client times out on a message the gateway did take,
which is exactly the case the idempotency key exists for. A repeated key is answered as a real
gateway would (same id, nothing sent twice) but still recorded, with duplicate=true, so tests and
the benchmark can count retries that reached the gateway.

gevent only cooperates in a monkey-patched process: run this through `python -m devstack.sinks
sms` (which patches first) or `devstack.sinks.process.start_sink_process`, not inside a plain
test process.
"""

from __future__ import annotations

import json
import random
import time
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Any
from wsgiref.types import StartResponse, WSGIEnvironment

import gevent
from gevent.pywsgi import WSGIHandler, WSGIServer

from devstack.ports import bind_listener
from devstack.sinks.records import Record, RecordFile, read_records

MAX_BODY_BYTES = 64 * 1024
DEFAULT_HANG_SECONDS = 30.0

_REASONS = {
    200: "OK",
    201: "Created",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    413: "Content Too Large",
    503: "Service Unavailable",
}


class InvalidMessage(ValueError):
    """The POST body is not a message this gateway accepts; answered with `status`."""

    status = 400


class MessageTooLarge(InvalidMessage):
    status = 413


class SmsGatewayApp:
    """The WSGI application. `delay`, `failure_rate`, `timeout_rate` and `hang_seconds` are
    plain attributes, read per request, so they may be changed while the server runs."""

    def __init__(
        self,
        records: RecordFile,
        *,
        delay: float = 0.05,
        failure_rate: float = 0.0,
        timeout_rate: float = 0.0,
        hang_seconds: float = DEFAULT_HANG_SECONDS,
        rng: random.Random | None = None,
    ) -> None:
        self.records = records
        self.delay = delay
        self.failure_rate = failure_rate
        self.timeout_rate = timeout_rate
        self.hang_seconds = hang_seconds
        self._rng = rng or random.Random()
        # idempotency key -> the id it was first accepted under; a restarted sink remembers
        # what it accepted before, as a real gateway would.
        self._accepted: dict[str, str] = {
            r["notification_id"]: r["id"]
            for r in read_records(records.path)
            if r.get("notification_id") and r.get("id") and not r.get("duplicate")
        }

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        method = environ.get("REQUEST_METHOD", "GET")
        if path == "/healthz" and method in ("GET", "HEAD"):
            return _json(start_response, 200, {"status": "ok"})
        if path != "/messages":
            return _json(start_response, 404, {"error": f"no such endpoint: {path}"})
        if method == "POST":
            return self._post_message(environ, start_response)
        if method == "GET":
            return _json(start_response, 200, read_records(self.records.path))
        return _json(start_response, 405, {"error": "use GET or POST"}, [("Allow", "GET, POST")])

    def _post_message(
        self, environ: WSGIEnvironment, start_response: StartResponse
    ) -> Iterable[bytes]:
        received_at, started = time.time(), time.monotonic()
        try:
            to, body, key = parse_message(environ)
        except InvalidMessage as exc:
            return _json(start_response, exc.status, {"error": str(exc)})
        # The answer comes `delay` after the request arrived, the sink's own work included.
        remaining = self.delay - (time.monotonic() - started)
        if remaining > 0:
            gevent.sleep(remaining)
        if self._rng.random() < self.failure_rate:
            return _json(start_response, 503, {"error": "sink failure (injected)"})
        # No yield between the lookup and the insert: greenlets cannot interleave here.
        first_id = self._accepted.get(key)
        duplicate = first_id is not None
        message_id = first_id or f"sms_{uuid.uuid4().hex}"
        self._accepted.setdefault(key, message_id)
        self.records.append(
            {
                "received_at": received_at,
                "kind": "sms",
                "notification_id": key,
                "id": message_id,
                "to": to,
                "body": body,
                "duplicate": duplicate,
            }
        )
        if self._rng.random() < self.timeout_rate:
            gevent.sleep(self.hang_seconds)
        status = 200 if duplicate else 201
        return _json(start_response, status, {"id": message_id, "duplicate": duplicate})


def parse_message(environ: WSGIEnvironment) -> tuple[str, str, str]:
    """(to, body, idempotency key) from a POST, or InvalidMessage saying what is wrong."""
    # One byte over the limit is enough to know the body is too large (chunked bodies too).
    raw = environ["wsgi.input"].read(MAX_BODY_BYTES + 1)
    if len(raw) > MAX_BODY_BYTES:
        raise MessageTooLarge(f"body larger than {MAX_BODY_BYTES} bytes")
    try:
        payload = json.loads(raw)
    except ValueError:
        raise InvalidMessage("body is not JSON") from None
    if not isinstance(payload, dict):
        raise InvalidMessage("body is not a JSON object")
    to = _required_string(payload, "to")
    body = _required_string(payload, "body")
    header_key = environ.get("HTTP_IDEMPOTENCY_KEY")
    if "idempotency_key" in payload:
        key = _required_string(payload, "idempotency_key")
        if header_key is not None and header_key != key:
            raise InvalidMessage("Idempotency-Key header and idempotency_key field differ")
    elif header_key:
        key = header_key
    else:
        raise InvalidMessage("idempotency_key is required (field or Idempotency-Key header)")
    return to, body, key


def _required_string(payload: dict[str, Any], field: str) -> str:
    value = payload.get(field)
    if not isinstance(value, str) or not value.strip():
        raise InvalidMessage(f"{field!r} must be a non-empty string")
    return value


def _json(
    start_response: StartResponse,
    status: int,
    document: Any,
    extra_headers: list[tuple[str, str]] | None = None,
) -> list[bytes]:
    payload = json.dumps(document, ensure_ascii=False).encode()
    headers = [("Content-Type", "application/json"), ("Content-Length", str(len(payload)))]
    start_response(f"{status} {_REASONS[status]}", headers + (extra_headers or []))
    return [payload]


class _UnloggedHandler(WSGIHandler):
    # With log=None pywsgi still formats an access line per request (a clock read and a
    # datetime) before throwing it away: 4% of the gateway's CPU under the bench's load.
    def log_request(self) -> None:
        pass


class SmsGatewaySink:
    """The gateway server with start()/stop(); a gevent-patched process only (see module doc).

    `delay`, `failure_rate`, `timeout_rate` and `hang_seconds` can be changed while it runs.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        record_path: str | Path = "sms.jsonl",
        *,
        delay: float = 0.05,
        failure_rate: float = 0.0,
        timeout_rate: float = 0.0,
        hang_seconds: float = DEFAULT_HANG_SECONDS,
    ) -> None:
        self.host = host
        self.port = port
        self.record_path = Path(record_path)
        self._records = RecordFile(self.record_path)
        self.app = SmsGatewayApp(
            self._records,
            delay=delay,
            failure_rate=failure_rate,
            timeout_rate=timeout_rate,
            hang_seconds=hang_seconds,
        )
        self._server: WSGIServer | None = None

    @property
    def delay(self) -> float:
        return self.app.delay

    @delay.setter
    def delay(self, seconds: float) -> None:
        self.app.delay = seconds

    @property
    def failure_rate(self) -> float:
        return self.app.failure_rate

    @failure_rate.setter
    def failure_rate(self, rate: float) -> None:
        self.app.failure_rate = rate

    @property
    def timeout_rate(self) -> float:
        return self.app.timeout_rate

    @timeout_rate.setter
    def timeout_rate(self, rate: float) -> None:
        self.app.timeout_rate = rate

    @property
    def hang_seconds(self) -> float:
        return self.app.hang_seconds

    @hang_seconds.setter
    def hang_seconds(self, seconds: float) -> None:
        self.app.hang_seconds = seconds

    def start(self) -> None:
        """Listen on host:port (port 0 picks a free one, then `.port` says which)."""
        if self._server is not None:
            raise RuntimeError("SMS gateway sink already running")
        # Accepted sockets inherit TCP_NODELAY: pywsgi writes headers and body separately.
        listener = bind_listener(self.host, self.port)
        server = WSGIServer(
            listener,
            self.app,
            log=None,
            handler_class=_UnloggedHandler,
            # Set, so pywsgi does not look the name up with getfqdn().
            environ={"SERVER_NAME": self.host},
        )
        server.start()
        self._server = server
        self.port = int(server.server_port)

    def stop(self, timeout: float = 1.0) -> None:
        """Stop accepting, give requests in flight `timeout` seconds; safe to call twice."""
        if self._server is not None:
            self._server.stop(timeout=timeout)
            self._server = None
        self._records.close()

    def records(self) -> list[Record]:
        return read_records(self.record_path)

    def __enter__(self) -> SmsGatewaySink:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
