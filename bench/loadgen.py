"""The load generator: a gevent child process the bench drives over stdin and stdout.

    python -m bench.loadgen      # reads LoadSpec lines, answers one LoadResult line each

One greenlet per simulated client, each with its own keep-alive `http.client.HTTPConnection`
and `TCP_NODELAY` set: http.client sends a POST's headers and body in two writes, and with
Nagle on the body would wait for the server's delayed ACK (the client-side twin of the stall the
bench shows on the server). Only this process is monkey-patched; the bench parent is not.
"""

from gevent import monkey

monkey.patch_all()

import http.client  # noqa: E402
import json  # noqa: E402
import socket  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from collections import Counter  # noqa: E402
from typing import Any  # noqa: E402

import gevent  # noqa: E402

from app.servertiming import parse_server_timing  # noqa: E402
from bench.protocol import (  # noqa: E402
    NOOP,
    NOOP_PATH,
    USERS_PATH,
    LoadResult,
    LoadSpec,
)
from bench.users import UserFactory  # noqa: E402

STEPS = ("db", "publish", "email", "sms")


class Client:
    """One simulated client: a keep-alive connection, reopened after an error."""

    def __init__(self, spec: LoadSpec) -> None:
        self.spec = spec
        self.connection: http.client.HTTPConnection | None = None

    def connect(self) -> http.client.HTTPConnection:
        if self.connection is None:
            connection = http.client.HTTPConnection(
                self.spec.host, self.spec.port, timeout=self.spec.timeout_s
            )
            connection.connect()
            assert connection.sock is not None
            connection.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.connection = connection
        return self.connection

    def close(self) -> None:
        if self.connection is not None:
            self.connection.close()
            self.connection = None

    def request(self, body: bytes | None) -> tuple[int, dict[str, float], bytes]:
        connection = self.connect()
        if body is None:
            connection.request("GET", NOOP_PATH)
        else:
            connection.request(
                "POST",
                f"{USERS_PATH}?mode={self.spec.mode}",
                body=body,
                headers={"Content-Type": "application/json"},
            )
        response = connection.getresponse()
        content = response.read()
        timing = response.getheader("Server-Timing")
        if response.will_close:
            self.close()
        return response.status, parse_server_timing(timing) if timing else {}, content


def run(spec: LoadSpec) -> LoadResult:
    users = UserFactory(spec.nonce, spec.offset)
    expected_status = 200 if spec.mode == NOOP else 201
    result = LoadResult(measure_from=0.0, measure_until=0.0, indices_used=0)
    result.steps = {step: [] for step in STEPS}
    errors: Counter[str] = Counter()
    next_index = spec.first_index
    issued = 0
    started_wall = time.time()
    started = time.perf_counter()
    measure_from = started + spec.warmup_s
    measure_until = measure_from + spec.duration_s
    result.measure_from = started_wall + spec.warmup_s
    result.measure_until = result.measure_from + spec.duration_s

    def more() -> bool:
        if spec.requests is not None:
            return issued < spec.requests
        return time.perf_counter() < measure_until

    def client_loop() -> None:
        nonlocal next_index, issued
        client = Client(spec)
        try:
            while more():
                if spec.rate:
                    # Paced: request n starts at n / rate, whatever the previous ones took.
                    gevent.sleep(max(started + issued / spec.rate - time.perf_counter(), 0))
                    if not more():
                        break
                issued += 1
                if spec.mode == NOOP:
                    index, body = -1, None
                else:
                    index, next_index = next_index, next_index + 1
                    body = json.dumps(users.user(index)).encode()
                wall = time.time()
                begun = time.perf_counter()
                try:
                    status, steps, _content = client.request(body)
                except (OSError, http.client.HTTPException) as exc:
                    status, steps = 0, {}
                    errors[type(exc).__name__] += 1
                    client.close()
                elapsed_ms = (time.perf_counter() - begun) * 1000
                if status and status != expected_status:
                    errors[f"HTTP {status}"] += 1
                result.start.append(wall)
                result.latency_ms.append(elapsed_ms)
                result.status.append(status)
                result.index.append(index)
                for step in STEPS:
                    result.steps[step].append(steps.get(step))
        finally:
            client.close()

    greenlets = [gevent.spawn(client_loop) for _ in range(spec.concurrency)]
    gevent.joinall(greenlets)
    for greenlet in greenlets:
        if greenlet.exception is not None:
            errors[f"crash: {greenlet.exception!r}"] += 1
    if spec.requests is not None:
        # A burst has no window: every request counts, until the last answer came back.
        ends = [s + ms / 1000 for s, ms in zip(result.start, result.latency_ms, strict=True)]
        result.measure_from = started_wall
        result.measure_until = max(ends, default=started_wall) + 1e-6
    result.indices_used = next_index - spec.first_index
    result.error_kinds = dict(errors)
    return result


def main() -> int:
    for line in sys.stdin:
        request: dict[str, Any] = json.loads(line)
        if request.get("command") == "quit":
            break
        try:
            answer = run(LoadSpec.from_dict(request)).to_line()
        except Exception as exc:
            answer = json.dumps({"failure": repr(exc)}).encode() + b"\n"
        sys.stdout.buffer.write(answer)
        sys.stdout.buffer.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
