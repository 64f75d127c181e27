"""Signed webhooks: a subscriber of `offload.events` that POSTs each `user.*` event to an
operator's endpoint (WEBHOOK_URLS), following Standard Webhooks 1.0.

Each endpoint has its own durable queue bound to `user.#` (app/topology.py), consumed by the
same loop as email and SMS (services/consumer.py) with this module's handler in place of the
notification ledger and a sender:

    claim   one transaction: write the endpoint's ledger row of each event if it is new, and
            lease every row not yet delivered (one UPDATE ... RETURNING), as the notification
            ledger does; a redelivery of a delivered event is acked without a POST
    send    POST the event's JSON as published, signed; 2xx is delivered, 4xx a permanent
            refusal (but 408, 425, 429), 5xx, a timeout or no connection worth a retry
    record  one transaction for the batch; retries and parking follow RETRY_DELAYS_MS and
            MAX_ATTEMPTS, through the endpoint's retry and parking queues

The request (Standard Webhooks): headers `webhook-id` (the event id, which is also the
receiver's idempotency key), `webhook-timestamp` (Unix seconds), `webhook-signature`
(`v1,<base64 HMAC-SHA256 of "<id>.<timestamp>.<body>">`, keyed by the base64-decoded part of
WEBHOOK_SECRET after `whsec_`), `content-type: application/json`; the body is the event.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, cast

import urllib3
from sqlalchemy import Table, bindparam, insert, or_, select, tuple_, update
from sqlalchemy.orm import Session, sessionmaker
from urllib3.exceptions import HTTPError

from app.db import database_now, session_scope
from app.events import MalformedEvent, decode_event
from app.logs import redact
from app.models import WebhookDelivery, utcnow
from app.senders import PermanentSendError, SendError, TransientSendError
from services.handlers import Ack, Park, Retry, RetryPolicy, Verdict, verdict_after_failure
from services.sms import retry_after_ms

log = logging.getLogger(__name__)

DELIVERIES = cast(Table, WebhookDelivery.__table__)
# An endpoint that takes longer is retried; keep it below SEND_LEASE_SECONDS.
WEBHOOK_TIMEOUT_SECONDS = 10.0
MAX_ERROR_LENGTH = 1000
# Timeout, too early, rate limited: the endpoint asks us to come back, not to give up.
_RETRYABLE_4XX = frozenset({408, 425, 429})


def sign(key: bytes, webhook_id: str, timestamp: int, body: bytes) -> str:
    """The `webhook-signature` header value (Standard Webhooks, scheme v1)."""
    signed = f"{webhook_id}.{timestamp}.".encode() + body
    return "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()


@dataclass(frozen=True)
class WebhookClaim:
    event_id: str
    body: bytes  # the event as published: exactly the bytes that are signed and POSTed
    attempts: int  # failed tries before this one
    lease_token: str


@dataclass(frozen=True)
class WebhookResult:
    claim: WebhookClaim
    error: SendError | None  # None: the endpoint answered 2xx


class WebhookHandler:
    """One endpoint's claim, send and record, for services/consumer.py."""

    def __init__(
        self,
        *,
        name: str,
        url: str,
        key: bytes,
        sessions: sessionmaker[Session],
        policy: RetryPolicy,
        max_connections: int = 50,
    ) -> None:
        self.name = name
        self.url = url
        self.key = key
        self.sessions = sessions
        self.policy = policy
        # Keep-alive to the endpoint; no retries or redirects behind our back: the retry policy
        # decides, and a redirect could carry a signed event somewhere nobody configured.
        self._http = urllib3.PoolManager(
            num_pools=2,
            maxsize=max_connections,
            retries=False,
            timeout=urllib3.Timeout(total=WEBHOOK_TIMEOUT_SECONDS),
        )

    # -- claim -------------------------------------------------------------------------------

    def claim(self, bodies: Sequence[bytes]) -> list[WebhookClaim | Verdict]:
        decided: list[WebhookClaim | Verdict | None] = [None] * len(bodies)
        wanted: dict[str, list[int]] = {}
        for index, body in enumerate(bodies):
            try:
                event = decode_event(body)
            except MalformedEvent as exc:
                decided[index] = Park(f"malformed event: {exc}")
                continue
            wanted.setdefault(event["id"], []).append(index)
        if wanted:
            token = uuid.uuid4().hex
            with session_scope(self.sessions) as session:
                leased = self._lease(session, list(wanted), token)
                missing = [event_id for event_id in wanted if event_id not in leased]
                statuses = self._statuses(session, missing) if missing else {}
                session.commit()
            for event_id, indexes in wanted.items():
                first, *others = indexes
                if event_id in leased:
                    decided[first] = WebhookClaim(event_id, bodies[first], leased[event_id], token)
                    for index in others:
                        decided[index] = Retry(self.policy.delays_ms[0], "another copy is sending")
                    continue
                verdict: Verdict = (
                    Ack("already sent")
                    if statuses.get(event_id) == "delivered"
                    else Retry(self.policy.delays_ms[0], "another consumer is sending this event")
                )
                for index in indexes:
                    decided[index] = verdict
        return [verdict for verdict in decided if verdict is not None]

    def _lease(self, session: Session, event_ids: list[str], token: str) -> dict[str, int]:
        connection = session.connection()
        known = set(
            connection.scalars(
                select(DELIVERIES.c.event_id).where(
                    DELIVERIES.c.endpoint == self.name, DELIVERIES.c.event_id.in_(event_ids)
                )
            )
        )
        new = [event_id for event_id in event_ids if event_id not in known]
        if new:
            now = utcnow()
            connection.execute(
                insert(DELIVERIES),
                [
                    {"event_id": event_id, "endpoint": self.name, "attempts": 0, "created_at": now}
                    for event_id in new
                ],
            )
        rows = connection.execute(
            update(DELIVERIES)
            .where(
                DELIVERIES.c.endpoint == self.name,
                DELIVERIES.c.event_id.in_(event_ids),
                or_(DELIVERIES.c.status.is_(None), DELIVERIES.c.status != "delivered"),
                or_(
                    DELIVERIES.c.send_lease_until.is_(None),
                    DELIVERIES.c.send_lease_until < database_now(),
                ),
            )
            .values(
                send_lease_until=database_now(self.policy.send_lease_seconds),
                send_lease_token=token,
            )
            .returning(DELIVERIES.c.event_id, DELIVERIES.c.attempts)
        )
        return {event_id: attempts for event_id, attempts in rows}

    def _statuses(self, session: Session, event_ids: list[str]) -> dict[str, str | None]:
        rows = session.connection().execute(
            select(DELIVERIES.c.event_id, DELIVERIES.c.status).where(
                DELIVERIES.c.endpoint == self.name, DELIVERIES.c.event_id.in_(event_ids)
            )
        )
        return {event_id: status for event_id, status in rows}

    # -- send --------------------------------------------------------------------------------

    def send(self, claim: WebhookClaim) -> WebhookResult:
        try:
            self.post(claim.event_id, claim.body)
        except SendError as exc:
            return WebhookResult(claim, exc)
        except Exception as exc:
            # Unexpected: counted as a transient failure, so it takes an attempt like any other.
            log.exception("webhook %s to %s failed unexpectedly", claim.event_id, self.name)
            return WebhookResult(claim, TransientSendError(redact(f"unexpected error: {exc!r}")))
        return WebhookResult(claim, None)

    def post(self, event_id: str, body: bytes) -> None:
        timestamp = int(time.time())
        try:
            response = self._http.request(
                "POST",
                self.url,
                body=body,
                headers={
                    "content-type": "application/json",
                    "webhook-id": event_id,
                    "webhook-timestamp": str(timestamp),
                    "webhook-signature": sign(self.key, event_id, timestamp, body),
                },
            )
        except (HTTPError, OSError, ValueError) as exc:
            raise TransientSendError(f"webhook endpoint unreachable: {exc!r}") from exc
        status = response.status
        if 200 <= status < 300:
            return
        reply = redact(response.data.decode("utf-8", "replace")[:200])
        detail = f"webhook endpoint answered {status}: {reply!r}"
        if 400 <= status < 500 and status not in _RETRYABLE_4XX:
            raise PermanentSendError(detail)
        raise TransientSendError(
            detail, retry_after_ms=retry_after_ms(response.headers.get("Retry-After"))
        )

    # -- record ------------------------------------------------------------------------------

    def record(self, results: Sequence[WebhookResult]) -> list[Verdict]:
        """Record the batch's results in one transaction; each row only if its claim's lease
        token is still on it (a lease taken over is not this record's to change)."""
        verdicts: list[Verdict] = []
        delivered: list[tuple[str, str]] = []
        failed: list[dict[str, object]] = []
        for result in results:
            claim = result.claim
            if result.error is None:
                delivered.append((claim.event_id, claim.lease_token))
                verdicts.append(Ack("sent"))
                continue
            verdict = verdict_after_failure(result.error, claim.attempts + 1, self.policy)
            failed.append(
                {
                    "failed_id": claim.event_id,
                    "token": claim.lease_token,
                    "new_status": "retrying" if isinstance(verdict, Retry) else "failed",
                    "error": str(result.error)[:MAX_ERROR_LENGTH],
                }
            )
            verdicts.append(verdict)
        with session_scope(self.sessions) as session:
            connection = session.connection()
            if delivered:
                connection.execute(
                    update(DELIVERIES)
                    .where(
                        DELIVERIES.c.endpoint == self.name,
                        # The keys alone first, as in app.ledger.record_sends: SQLite would
                        # scan the table for the (event_id, token) pairs.
                        DELIVERIES.c.event_id.in_([event_id for event_id, _token in delivered]),
                        tuple_(DELIVERIES.c.event_id, DELIVERIES.c.send_lease_token).in_(delivered),
                    )
                    .values(
                        status="delivered",
                        attempts=DELIVERIES.c.attempts + 1,
                        delivered_at=utcnow(),
                        last_error=None,
                        send_lease_until=None,
                        send_lease_token=None,
                    )
                )
            if failed:
                connection.execute(
                    update(DELIVERIES)
                    .where(
                        DELIVERIES.c.endpoint == self.name,
                        DELIVERIES.c.event_id == bindparam("failed_id"),
                        DELIVERIES.c.send_lease_token == bindparam("token"),
                    )
                    .values(
                        status=bindparam("new_status"),
                        attempts=DELIVERIES.c.attempts + 1,
                        last_error=bindparam("error"),
                        send_lease_until=None,
                        send_lease_token=None,
                    ),
                    failed,
                )
            session.commit()
        return verdicts


def delivery_of(session: Session, event_id: str, endpoint: str) -> dict[str, Any] | None:
    """One ledger row as a dict (tests, operators)."""
    row = (
        session.connection()
        .execute(
            select(DELIVERIES).where(
                DELIVERIES.c.event_id == event_id, DELIVERIES.c.endpoint == endpoint
            )
        )
        .mappings()
        .first()
    )
    return dict(row) if row is not None else None
