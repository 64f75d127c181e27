"""The message contract between the web app, the relay and the consumers.

Topology names live here and nowhere else. A job is versioned JSON (never pickle) and carries the
id of its notification row, which is how consumers find the ledger entry and skip a job that
was already sent when RabbitMQ delivers it again.

    offload.events (topic) --user.registered--> offload.email, offload.sms
                           --user.#-----------> offload.webhook.<hash>  one per WEBHOOK_URLS
                                                (and any queue an operator binds)

    offload.jobs (direct) --email--> offload.email --(retry)--> offload.email.retry.<ms> --TTL--+
                          --sms----> offload.sms                                               |
                          <-------------------------------- dead-lettered back, same key ------+
    offload.parked (direct) --email--> offload.email.parked   (permanent failures, poison)
                            --sms----> offload.sms.parked

A registration publishes one message, its `user.registered` event (app/events.py), and the
broker copies it to every queue bound to that key: the email and SMS consumers each look their
own notification row up by the event's id. Jobs (below) carry one notification each: a resend,
a held SMS released, a row the relay or its sweeper publishes again. A channel queue therefore
holds both kinds of body; a retry or a parked copy keeps the body it had. Webhook queues are
retried and parked like the jobs, through the default exchange.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from typing import Any, Literal

from app.db import compact_json

JOBS_EXCHANGE = "offload.jobs"
PARKED_EXCHANGE = "offload.parked"
EVENTS_EXCHANGE = "offload.events"
CHANNELS: tuple[str, ...] = ("email", "sms")
SCHEMA_VERSION = 1


# What a webhook endpoint's queue receives from offload.events.
WEBHOOK_BINDING = "user.#"


def webhook_name(url: str) -> str:
    """An endpoint's stable name, from its URL: its queues are `offload.<name>...` and its
    ledger rows carry it. Hashed, so a URL's credentials never show in a queue name."""
    return "webhook." + hashlib.sha256(url.encode()).hexdigest()[:12]


def work_queue(channel: str) -> str:
    return f"offload.{channel}"


def retry_queue(channel: str, delay_ms: int) -> str:
    return f"offload.{channel}.retry.{delay_ms}"


def parked_queue(channel: str) -> str:
    return f"offload.{channel}.parked"


class MalformedJob(ValueError):
    """The message body is not a job this version understands; it goes to the parking queue."""


@dataclass(frozen=True)
class EmailJob:
    notification_id: str
    to: str
    subject: str
    text: str
    kind: Literal["email"] = "email"


@dataclass(frozen=True)
class SmsJob:
    notification_id: str
    to: str
    body: str
    kind: Literal["sms"] = "sms"


Job = EmailJob | SmsJob

_FIELDS: dict[str, tuple[type[EmailJob] | type[SmsJob], tuple[str, ...]]] = {
    "email": (EmailJob, ("notification_id", "to", "subject", "text")),
    "sms": (SmsJob, ("notification_id", "to", "body")),
}


# What a sent job's secret-bearing text becomes in the outbox row (see scrubbed_payload).
SCRUBBED_TEXT = "[removed once sent: it carried a verification secret]"


# The field of each kind of job whose text carries the secret: the email's link token, the SMS
# code.
SECRET_FIELD: dict[str, str] = {"email": "text", "sms": "body"}


def scrubbed_payload(kind: str, payload: dict[str, object]) -> dict[str, object]:
    """A job's stored payload without its secret: what the outbox row keeps once the message
    is sent. The ledger needs only the id, the kind and the recipient. The records of sends
    do this in SQL (app/ledger.py `_SCRUBBED_PAYLOAD`); the web's record of its own sends does
    it here too, for the rows it answers with."""
    return {**payload, SECRET_FIELD[kind]: SCRUBBED_TEXT}


def job_to_dict(job: Job) -> dict[str, Any]:
    return {"v": SCHEMA_VERSION, **asdict(job)}


def encode_job(job: Job) -> bytes:
    return compact_json(job_to_dict(job)).encode()


def job_from_dict(data: Any) -> Job:
    if not isinstance(data, dict):
        raise MalformedJob("job is not a JSON object")
    version = data.get("v")
    # `type(...) is int`: JSON `true` equals 1 in Python, and is no version.
    if type(version) is not int or version != SCHEMA_VERSION:
        raise MalformedJob(f"unsupported job version {version!r}")
    kind = data.get("kind")
    # A list or object as kind is unhashable: without the str check the lookup would raise
    # TypeError, which the consumer would retry instead of parking the poison job.
    if not isinstance(kind, str) or kind not in _FIELDS:
        raise MalformedJob(f"unknown job kind {kind!r}")
    cls, fields = _FIELDS[kind]
    values: dict[str, str] = {}
    for field in fields:
        value = data.get(field)
        if not isinstance(value, str) or not value:
            raise MalformedJob(f"{kind} job field {field!r} must be a non-empty string")
        values[field] = value
    return cls(**values)  # type: ignore[arg-type]


def decode_job(body: bytes) -> Job:
    try:
        data = json.loads(body)
    except (UnicodeDecodeError, ValueError) as exc:
        raise MalformedJob(f"body is not JSON: {exc}") from None
    return job_from_dict(data)
