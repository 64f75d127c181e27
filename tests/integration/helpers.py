"""Small helpers for tests against the real stack: register over HTTP, wait, count deliveries,
a vhost of a test's own on the stack's broker."""

from __future__ import annotations

import itertools
import json
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import requests

from bench.users import UserFactory

# The tests take phone numbers from the start of the bench's number space; the in-suite soak
# takes its own from the middle (see bench.soak.soak_users), so the two never collide.
_numbers = UserFactory(nonce="tests")
_next_index = itertools.count()


def unique_user(tag: str = "user") -> dict[str, str]:
    """A fresh, valid registration; the email address starts with `tag`."""
    return {
        "name": f"Test {tag}",
        "email": f"{tag}-{uuid.uuid4().hex[:12]}@example.com",
        "phone": _numbers.phone(next(_next_index)),
    }


def register(
    base_url: str,
    mode: str = "queued",
    user: dict[str, str] | None = None,
    session: requests.Session | None = None,
) -> dict[str, Any]:
    http = session or requests
    response = http.post(
        f"{base_url}/api/users?mode={mode}", json=user or unique_user(mode), timeout=30
    )
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    # The status opens with the token handed out once, not with the id: keep it with the user.
    body["user"]["status_token"] = body["status_token"]
    return body


def status_of(base_url: str, user: dict[str, Any], session: Any = None) -> dict[str, Any]:
    """The user as GET /api/status/<token> describes it."""
    http = session or requests
    response = http.get(f"{base_url}/api/status/{user['status_token']}", timeout=10)
    response.raise_for_status()
    described: dict[str, Any] = response.json()["user"]
    return described


def wait_for(predicate: Callable[[], bool], *, timeout: float, what: str) -> None:
    """Poll until `predicate()` holds; fail with `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


def deliveries(stack: Any, kind: str, recipients: set[str]) -> Counter[str]:
    """How many times each of `recipients` reached the sink of `kind` ("smtp" or "sms")."""
    records = stack.sinks[kind].records()
    counts: Counter[str] = Counter()
    for record in records:
        if record["to"] in recipients and not record.get("duplicate"):
            counts[record["to"]] += 1
    return counts


def assert_delivered_once(stack: Any, users: list[dict[str, Any]], *, timeout: float) -> None:
    """Every user's email and SMS arrived, and none arrived twice."""
    emails = {u["email"] for u in users}
    phones = {u["phone"] for u in users}
    wait_for(
        lambda: (
            len(deliveries(stack, "smtp", emails)) == len(emails)
            and len(deliveries(stack, "sms", phones)) == len(phones)
        ),
        timeout=timeout,
        what=f"{len(users)} emails and SMS to reach the sinks",
    )
    time.sleep(0.5)  # a duplicate would arrive right behind the original
    email_counts = deliveries(stack, "smtp", emails)
    sms_counts = deliveries(stack, "sms", phones)
    assert set(email_counts.values()) == {1}, f"emails sent twice: {email_counts.most_common(3)}"
    assert set(sms_counts.values()) == {1}, f"SMS sent twice: {sms_counts.most_common(3)}"


def ledger_statuses(stack: Any, users: list[dict[str, Any]]) -> list[str]:
    """The notification statuses of `users` as the database has them now."""
    from sqlalchemy import select

    from app.db import make_engine
    from app.models import Notification

    engine = make_engine(stack.database_url)
    try:
        with engine.connect() as connection:
            rows = connection.execute(
                select(Notification.status).where(
                    Notification.user_id.in_([u["id"] for u in users])
                )
            )
            return [status for (status,) in rows]
    finally:
        engine.dispose()


def wait_until_confirmed(stack: Any, users: list[dict[str, Any]], *, timeout: float = 15) -> None:
    """Until the broker confirmed every job of `users` (the web marks their rows `queued`)."""
    wait_for(
        lambda: set(ledger_statuses(stack, users)) == {"queued"},
        timeout=timeout,
        what="the broker's confirms to mark every job queued",
    )


@contextmanager
def own_vhost(stack: Any, prefix: str) -> Iterator[str]:
    """A vhost of the test's own on the stack's node, deleted after; yields its AMQP URL."""
    assert stack.node is not None
    with stack.node.vhost(f"{prefix}-{uuid.uuid4().hex[:8]}") as url:
        yield url


def queue_arguments(stack: Any, vhost_url: str) -> dict[str, str]:
    """Each queue's arguments in the vhost, as the broker lists them."""
    listed = stack.node.ctl(
        "list_queues", "-p", vhost_url.rsplit("/", 1)[1], "name", "arguments", "--formatter", "json"
    )
    assert listed.returncode == 0, listed.stderr
    # rabbitmqctl's JSON shape for arguments varies by version: read them as text.
    return {queue["name"]: json.dumps(queue["arguments"]) for queue in json.loads(listed.stdout)}
