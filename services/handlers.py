"""What a consumer does with its messages, decided without touching the broker.

A batch of messages goes through three steps: `claim_batch` (one transaction: which jobs to
send now, and a verdict for the others), `send_claimed` (one per job, concurrently), and
`record_batch` (one transaction: the ledger records every result and each message gets its
verdict: ack, retry later, or park). The consumer loop carries the verdicts out. Keeping this
pure of pika makes every branch testable with a real database and a recording sender;
`handle_message` runs one message through the same three steps.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from app.db import session_scope
from app.jobs import Job, MalformedJob, decode_job, job_to_dict, scrub_job
from app.ledger import (
    Failure,
    Sent,
    new_lease_token,
    notification_statuses,
    record_sends,
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


def claim_batch(
    bodies: Sequence[bytes],
    *,
    channel: str,
    sessions: sessionmaker[Session],
    policy: RetryPolicy,
) -> list[Claim | Verdict]:
    """Decide, for each message body, whether to send it now or what else to do with it.

    One transaction for the whole batch: an `UPDATE ... RETURNING` takes the send lease on
    every row that is not sent and not leased by another consumer, and returns the attempts
    so far. Only the rows it did not return need a second look (a SELECT), to tell a
    redelivery of a sent job (ack) from a job being sent elsewhere (retry later) from a row
    that does not exist (park).
    """
    decided: list[Claim | Verdict | None] = [None] * len(bodies)
    wanted: dict[str, list[tuple[int, Job]]] = {}
    for index, body in enumerate(bodies):
        try:
            job = decode_job(body)
        except MalformedJob as exc:
            decided[index] = Park(f"malformed job: {exc}")
            continue
        if job.kind != channel:
            decided[index] = Park(f"a {job.kind} job on the {channel} queue")
            continue
        wanted.setdefault(job.notification_id, []).append((index, job))
    if wanted:
        token = new_lease_token()
        with session_scope(sessions) as session:
            leased = take_send_leases(session, list(wanted), policy.send_lease_seconds, token)
            missing = [
                notification_id for notification_id in wanted if notification_id not in leased
            ]
            statuses = notification_statuses(session, missing) if missing else {}
            session.commit()
        for notification_id, copies in wanted.items():
            first_index, first_job = copies[0]
            if notification_id in leased:
                decided[first_index] = Claim(first_job, leased[notification_id], token)
                # Two copies of one job in one batch: the first is sent, the others look again
                # later, by when the ledger says sent.
                for index, _job in copies[1:]:
                    decided[index] = Retry(policy.delays_ms[0], "another copy is being sent")
                continue
            verdict = _not_claimed(notification_id, statuses.get(notification_id), policy)
            for index, _job in copies:
                decided[index] = verdict
    return [verdict for verdict in decided if verdict is not None]


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


def record_batch(
    results: Sequence[SendResult], *, sessions: sessionmaker[Session], policy: RetryPolicy
) -> list[Verdict]:
    """Record every send's result in one transaction; return the verdict for each message."""
    verdicts: list[Verdict] = []
    sent: list[Sent] = []
    failures: list[Failure] = []
    for result in results:
        notification_id = result.claim.job.notification_id
        token = result.claim.lease_token
        error = result.error
        if error is None:
            sent.append(Sent(notification_id, token, job_to_dict(scrub_job(result.claim.job))))
            verdicts.append(Ack("sent"))
            continue
        attempts = result.claim.attempts + 1
        if isinstance(error, PermanentSendError):
            failures.append(Failure(notification_id, str(error), "failed", token))
            verdicts.append(Park(f"permanent failure: {error}"))
        elif attempts >= policy.max_attempts:
            failures.append(Failure(notification_id, str(error), "failed", token))
            verdicts.append(Park(f"gave up after {attempts} attempts: {error}"))
        else:
            failures.append(Failure(notification_id, str(error), "queued", token))
            wait_ms = error.retry_after_ms if isinstance(error, TransientSendError) else 0
            verdicts.append(Retry(policy.delay_after(attempts, at_least_ms=wait_ms), str(error)))
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
