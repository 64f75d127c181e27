"""What a consumer does with its messages, decided without touching the broker.

A batch of messages goes through three steps: `claim_batch` (one transaction: which jobs to
send now, and a verdict for the others), `send_claimed` (one per job, concurrently), and
`record_batch` (one transaction: the ledger records every result and each message gets its
verdict: ack, retry later, or park). The consumer loop carries the verdicts out. Keeping this
pure of pika makes every branch testable with a real database and a recording sender;
`handle_message` runs one message through the same three steps.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from sqlalchemy.orm import Session, sessionmaker

from app.db import session_scope
from app.events import USER_REGISTERED, MalformedEvent, event_from_dict
from app.jobs import Job, MalformedJob, job_from_dict
from app.ledger import (
    EVENT_SENDABLE,
    EventLease,
    Failure,
    Sent,
    event_notification_statuses,
    new_lease_token,
    notification_statuses,
    record_sends,
    take_event_send_leases,
    take_send_leases,
)
from app.logs import redact
from app.senders import PermanentSendError, Sender, SendError, TransientSendError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Ack:
    reason: str  # "sent" or "already sent"


@dataclass(frozen=True)
class Retry:
    delay_ms: int
    reason: str


@dataclass(frozen=True)
class Park:
    reason: str


Verdict = Ack | Retry | Park
VERDICTS = (Ack, Retry, Park)


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int
    delays_ms: tuple[int, ...]
    send_lease_seconds: float = 30.0

    def delay_after(self, attempts: int, *, at_least_ms: int = 0) -> int:
        """Backoff before the next try, after `attempts` failed tries (1-based).

        `at_least_ms` is what the remote side asked for (a 429's Retry-After): the shortest
        configured delay that honours it, since retries wait in one TTL queue per delay.
        """
        delay = self.delays_ms[min(attempts, len(self.delays_ms)) - 1]
        if delay >= at_least_ms:
            return delay
        return next((d for d in sorted(self.delays_ms) if d >= at_least_ms), max(self.delays_ms))


@dataclass(frozen=True)
class Claim:
    """A job this consumer holds the send lease for: send it, then record the result."""

    job: Job
    attempts: int  # failed tries before this one
    lease_token: str = ""  # the claim's token: the record changes the row only if it still holds it


@dataclass(frozen=True)
class SendResult:
    claim: Claim
    error: SendError | None  # None: the server accepted the message


@dataclass(frozen=True)
class RegistrationEvent:
    """A `user.registered` event on a channel queue: it names the row to send by the event."""

    event_id: str


def decode_message(body: bytes, channel: str) -> Job | RegistrationEvent | Park:
    """What a channel queue's message asks for: a job (one notification), a registration's
    event, or, for anything else, the Park verdict that says why."""
    try:
        data = json.loads(body)
    except (UnicodeDecodeError, ValueError) as exc:
        return Park(f"malformed job: body is not JSON: {exc}")
    if isinstance(data, dict) and "type" in data:
        try:
            event = event_from_dict(data)
        except MalformedEvent as exc:
            return Park(f"malformed event: {exc}")
        if event["type"] != USER_REGISTERED:
            return Park(f"a {event['type']} event on the {channel} queue")
        return RegistrationEvent(event["id"])
    try:
        job = job_from_dict(data)
    except MalformedJob as exc:
        return Park(f"malformed job: {exc}")
    if job.kind != channel:
        return Park(f"a {job.kind} job on the {channel} queue")
    return job


def claim_batch(
    bodies: Sequence[bytes],
    *,
    channel: str,
    sessions: sessionmaker[Session],
    policy: RetryPolicy,
) -> list[Claim | Verdict]:
    """Decide, for each message body, whether to send it now or what else to do with it.

    One transaction for the whole batch: an `UPDATE ... RETURNING` takes the send lease on
    every row the jobs name that is not sent and not leased by another consumer, and returns
    the attempts so far; another takes it on this channel's row of every registration event,
    and returns the job itself from the row. Only the rows they did not return need a second
    look (a SELECT), to tell a redelivery of a sent job (ack) from a job being sent elsewhere
    (retry later) from a row that does not exist (park a job; ack an event: nothing to send).
    """
    decided: list[Claim | Verdict | None] = [None] * len(bodies)
    wanted: dict[str, list[tuple[int, Job]]] = {}
    announced: dict[str, list[int]] = {}
    for index, body in enumerate(bodies):
        message = decode_message(body, channel)
        if isinstance(message, Park):
            decided[index] = message
        elif isinstance(message, RegistrationEvent):
            announced.setdefault(message.event_id, []).append(index)
        else:
            wanted.setdefault(message.notification_id, []).append((index, message))
    if not wanted and not announced:
        return [verdict for verdict in decided if verdict is not None]
    token = new_lease_token()
    seconds = policy.send_lease_seconds
    with session_scope(sessions) as session:
        leased = take_send_leases(session, list(wanted), seconds, token) if wanted else {}
        leased_events = (
            take_event_send_leases(session, list(announced), channel, seconds, token)
            if announced
            else {}
        )
        missing = [notification_id for notification_id in wanted if notification_id not in leased]
        statuses = notification_statuses(session, missing) if missing else {}
        unleased = [event_id for event_id in announced if event_id not in leased_events]
        event_statuses = event_notification_statuses(session, unleased, channel) if unleased else {}
        session.commit()
    for notification_id, copies in wanted.items():
        if notification_id in leased:
            first_index, first_job = copies[0]
            decided[first_index] = Claim(first_job, leased[notification_id], token)
            # Two copies of one job in one batch: the first is sent, the others look again
            # later, by when the ledger says sent.
            _retry_the_rest(decided, [index for index, _job in copies[1:]], policy)
            continue
        verdict = _not_claimed(notification_id, statuses.get(notification_id), policy)
        for index, _job in copies:
            decided[index] = verdict
    for event_id, indexes in announced.items():
        lease = leased_events.get(event_id)
        if lease is not None:
            decided[indexes[0]] = _event_claim(lease, channel, token)
            _retry_the_rest(decided, indexes[1:], policy)
            continue
        verdict = _event_not_claimed(channel, event_statuses.get(event_id), policy)
        for index in indexes:
            decided[index] = verdict
    return [verdict for verdict in decided if verdict is not None]


def _retry_the_rest(
    decided: list[Claim | Verdict | None], indexes: Sequence[int], policy: RetryPolicy
) -> None:
    for index in indexes:
        decided[index] = Retry(policy.delays_ms[0], "another copy is being sent")


def _event_claim(lease: EventLease, channel: str, token: str) -> Claim | Park:
    try:
        job = job_from_dict(lease.payload)
    except MalformedJob as exc:
        # An outbox row this version cannot read: parked for a person to look at (the lease
        # runs out on its own).
        return Park(f"notification {lease.notification_id}: malformed job in its row: {exc}")
    if job.kind != channel:
        return Park(f"notification {lease.notification_id} is a {job.kind} job")
    return Claim(job, lease.attempts, token)


def _not_claimed(notification_id: str, status: str | None, policy: RetryPolicy) -> Verdict:
    if status is None:
        return Park(f"unknown notification {notification_id}")
    if status == "sent":
        # A redelivery (consumer died before its ack, broker restart): the ledger says it
        # already went out, so it must not go out twice.
        return Ack("already sent")
    # Another copy of this job is being sent right now: look again after a pause, by which
    # time the ledger says sent (ack) or the lease ran out (send).
    return Retry(policy.delays_ms[0], "another consumer is sending this notification")


def _event_not_claimed(channel: str, status: str | None, policy: RetryPolicy) -> Verdict:
    if status is None:
        # Its user was deleted (an expired registration gave way), or it predates the events.
        return Ack(f"no {channel} notification for this registration")
    if status == "sent":
        # Sent inline (serial, parallel), by a job of its own, or a redelivery of this event.
        return Ack("already sent")
    if status in EVENT_SENDABLE:
        # Leased: a request or another consumer is sending it right now.
        return Retry(policy.delays_ms[0], "another consumer is sending this notification")
    # Held over an SMS budget, skipped by the benchmark's baseline, or given up on: none of
    # those is this event's to send (a held SMS goes out as a job once released).
    return Ack(f"nothing to send: the notification is {status}")


def send_claimed(claim: Claim, sender: Sender[Any]) -> SendResult:
    try:
        sender.send(claim.job)
    except SendError as exc:
        return SendResult(claim, exc)
    except Exception as exc:
        # Unexpected (a bug, a library's surprise): counted as a transient failure, so it
        # takes an attempt like any other and nothing retries for ever.
        log.exception("sending %s failed unexpectedly", claim.job.notification_id)
        return SendResult(claim, TransientSendError(redact(f"unexpected error: {exc!r}")))
    return SendResult(claim, None)


def verdict_after_failure(error: SendError, attempts: int, policy: RetryPolicy) -> Retry | Park:
    """What follows a failed send, `attempts` tries in: park it, or retry after a backoff."""
    if isinstance(error, PermanentSendError):
        return Park(f"permanent failure: {error}")
    if attempts >= policy.max_attempts:
        return Park(f"gave up after {attempts} attempts: {error}")
    wait_ms = error.retry_after_ms if isinstance(error, TransientSendError) else 0
    return Retry(policy.delay_after(attempts, at_least_ms=wait_ms), str(error))


def record_batch(
    results: Sequence[SendResult], *, sessions: sessionmaker[Session], policy: RetryPolicy
) -> list[Verdict]:
    """Record every send's result in one transaction; return the verdict for each message."""
    verdicts: list[Verdict] = []
    sent: list[Sent] = []
    failures: list[Failure] = []
    for result in results:
        notification_id = result.claim.job.notification_id
        kind = result.claim.job.kind
        token = result.claim.lease_token
        error = result.error
        if error is None:
            sent.append(Sent(notification_id, token, kind))
            verdicts.append(Ack("sent"))
            continue
        verdict = verdict_after_failure(error, result.claim.attempts + 1, policy)
        status = "queued" if isinstance(verdict, Retry) else "failed"
        failures.append(Failure(notification_id, str(error), status, token, kind))
        verdicts.append(verdict)
    with session_scope(sessions) as session:
        record_sends(session, sent, failures)
    return verdicts


def handle_message(
    body: bytes,
    *,
    channel: str,
    sender: Sender[Any],
    sessions: sessionmaker[Session],
    policy: RetryPolicy,
) -> Verdict:
    """One message through the same steps as a batch: claim, send, record."""
    decided = claim_batch([body], channel=channel, sessions=sessions, policy=policy)[0]
    if not isinstance(decided, Claim):
        return decided
    return record_batch([send_claimed(decided, sender)], sessions=sessions, policy=policy)[0]


class Handler(Protocol):
    """What the consume loop (services/consumer.py) does with a queue's messages, in its three
    steps: claim a batch (one transaction), send each claim (concurrently, never raising: an
    error is a result), record a batch of results (one transaction). A claim is anything that
    is not a Verdict; the loop only carries claims from one step to the next."""

    def claim(self, bodies: Sequence[bytes]) -> list[Any]: ...

    def send(self, claim: Any) -> Any: ...

    def record(self, results: Sequence[Any]) -> list[Verdict]: ...


class NotificationHandler:
    """Email and SMS jobs: the notification ledger and a channel's sender."""

    def __init__(
        self,
        channel: str,
        sender: Sender[Any],
        sessions: sessionmaker[Session],
        policy: RetryPolicy,
    ) -> None:
        self.channel = channel
        self.sender = sender
        self.sessions = sessions
        self.policy = policy

    def claim(self, bodies: Sequence[bytes]) -> list[Claim | Verdict]:
        return claim_batch(bodies, channel=self.channel, sessions=self.sessions, policy=self.policy)

    def send(self, claim: Claim) -> SendResult:
        return send_claimed(claim, self.sender)

    def record(self, results: Sequence[SendResult]) -> list[Verdict]:
        return record_batch(results, sessions=self.sessions, policy=self.policy)
