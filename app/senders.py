"""The sender interface shared by the request path (serial, parallel) and the consumers, beside
the publisher interface (`app/messaging.py`): both are how the core hands a notification on.

A sender either returns (the server accepted the message) or raises one of two errors, and the
difference decides what happens next: a transient failure is retried with backoff, a permanent
one is parked at once.
"""

from __future__ import annotations

from typing import Protocol, TypeVar

from app.jobs import EmailJob, Job, SmsJob

J = TypeVar("J", EmailJob, SmsJob, contravariant=True)


class SendError(Exception):
    """The message was not delivered to the server."""


class TransientSendError(SendError):
    """Worth another try later: connection refused, timeout, SMTP 4xx, gateway 5xx.

    `retry_after_ms`: how long the remote side asked us to wait (a 429's Retry-After), or 0.
    """

    def __init__(self, message: str, *, retry_after_ms: int = 0) -> None:
        super().__init__(message)
        self.retry_after_ms = retry_after_ms


class PermanentSendError(SendError):
    """Trying again cannot help: SMTP 5xx, gateway 4xx."""


class Sender(Protocol[J]):
    def send(self, job: J) -> None: ...


class RecordingSender:
    """Test twin: keeps what it was asked to send, or raises what it was told to."""

    def __init__(self, *, fail_with: SendError | None = None) -> None:
        self.sent: list[Job] = []
        self.fail_with = fail_with

    def send(self, job: Job) -> None:
        if self.fail_with is not None:
            raise self.fail_with
        self.sent.append(job)
