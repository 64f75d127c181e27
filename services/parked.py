"""List, replay and purge parked jobs: `python -m services.parked list|replay|purge`.

A job is parked when it failed permanently, ran out of attempts, or could not be read. Its
headers say why (`x-offload-reason`). Replaying moves it back onto the jobs exchange (after the
cause is fixed: the SMTP server is back, the address corrected); the consumer's ledger check
still makes sure nothing already sent goes out again.

The webhook endpoints' parked events (WEBHOOK_URLS; `--channel webhook.<hash>`, or all) are
listed, replayed and purged the same way; a replayed event goes straight back to its
endpoint's queue, not through offload.events (which would reach every subscriber again).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pika

from app.config import load_settings_or_exit
from app.events import MalformedEvent, decode_event
from app.jobs import (
    CHANNELS,
    JOBS_EXCHANGE,
    EmailJob,
    MalformedJob,
    decode_job,
    parked_queue,
    retry_queue,
    webhook_name,
    work_queue,
)
from app.logs import mask_email, mask_phone
from app.topology import cluster_parameters, declare_topology


@dataclass(frozen=True)
class ParkedJob:
    """A parked job as the listing shows it: never the body, which carries a verification
    secret (the SMS code, the email's link token); `recipient` is masked."""

    channel: str
    reason: str
    parked_at: str
    notification_id: str | None
    recipient: str


def _recipient(body: bytes) -> str:
    if body.startswith(b'{"v":1,"id"'):  # an event (app.events.encode_event), not a job
        try:
            event = decode_event(body)
        except MalformedEvent:
            return "(unreadable event)"
        return f"{event['type']} (event {event['id']})"
    try:
        job = decode_job(body)
    except MalformedJob:
        return "(unreadable job)"
    return mask_email(job.to) if isinstance(job, EmailJob) else mask_phone(job.to)


def _describe(channel: str, properties: Any, body: bytes) -> ParkedJob:
    headers = properties.headers or {}
    parked_at = headers.get("x-offload-parked-at")
    when = datetime.fromtimestamp(parked_at, UTC).isoformat() if parked_at else "unknown"
    return ParkedJob(
        channel=channel,
        reason=str(headers.get("x-offload-reason", "dead-lettered by the broker")),
        parked_at=when,
        notification_id=properties.message_id,
        recipient=_recipient(body),
    )


def list_parked(
    channel: pika.adapters.blocking_connection.BlockingChannel, name: str, limit: int
) -> list[ParkedJob]:
    """Look at up to `limit` parked jobs without removing them (they are requeued)."""
    seen: list[ParkedJob] = []
    tags: list[int] = []
    for _ in range(limit):
        method, properties, body = channel.basic_get(parked_queue(name), auto_ack=False)
        if method is None:
            break
        tags.append(method.delivery_tag)
        seen.append(_describe(name, properties, body))
    if tags:
        channel.basic_nack(tags[-1], multiple=True, requeue=True)
    return seen


def print_parked(name: str, jobs: list[ParkedJob]) -> None:
    print(f"{parked_queue(name)}: {len(jobs)} shown")
    for job in jobs:
        print(f"  {job.parked_at}  {job.notification_id or '-'}  {job.recipient}  {job.reason}")


def replay_parked(
    channel: pika.adapters.blocking_connection.BlockingChannel, name: str, limit: int
) -> int:
    """Move up to `limit` parked jobs back to their work queue; return how many moved."""
    channel.confirm_delivery()
    moved = 0
    for _ in range(limit):
        method, properties, body = channel.basic_get(parked_queue(name), auto_ack=False)
        if method is None:
            break
        headers = {
            k: v
            for k, v in (properties.headers or {}).items()
            if not k.startswith("x-offload-") and k != "x-death"
        }
        webhook = name not in CHANNELS
        channel.basic_publish(
            "" if webhook else JOBS_EXCHANGE,
            routing_key=work_queue(name) if webhook else name,
            body=body,
            properties=pika.BasicProperties(
                content_type=properties.content_type,
                delivery_mode=pika.DeliveryMode.Persistent,
                message_id=properties.message_id,
                type=properties.type,
                headers={**headers, "x-offload-replayed": True},
            ),
            mandatory=True,
        )
        # Ack the parked copy only once the replayed one is confirmed.
        channel.basic_ack(method.delivery_tag)
        moved += 1
    return moved


@dataclass(frozen=True)
class QueueDepth:
    queue: str
    messages: int
    consumers: int


@dataclass(frozen=True)
class BrokerSnapshot:
    """What the operator page shows of the broker: every queue's depth, and parked jobs."""

    depths: list[QueueDepth]
    parked: list[ParkedJob]


def queue_names(retry_delays_ms: Sequence[int]) -> list[str]:
    names = []
    for name in CHANNELS:
        names += [work_queue(name), *(retry_queue(name, d) for d in retry_delays_ms)]
        names.append(parked_queue(name))
    return names


def snapshot(amqp_url: str, retry_delays_ms: Sequence[int], *, limit: int) -> BrokerSnapshot:
    """Queue depths (passive declares: nothing is created) and up to `limit` parked jobs per
    channel, over a short-lived connection to the first node that answers."""
    connection = pika.BlockingConnection(cluster_parameters(amqp_url, name="offload-ops"))
    try:
        channel = connection.channel()
        depths = []
        for queue in queue_names(retry_delays_ms):
            declared = channel.queue_declare(queue, passive=True).method
            depths.append(QueueDepth(queue, declared.message_count, declared.consumer_count))
        parked = [job for name in CHANNELS for job in list_parked(channel, name, limit)]
        return BrokerSnapshot(depths, parked)
    finally:
        if connection.is_open:
            connection.close()


def replay(amqp_url: str, name: str, limit: int) -> int:
    """`replay_parked` over a short-lived connection (the operator page's button)."""
    connection = pika.BlockingConnection(cluster_parameters(amqp_url, name="offload-ops"))
    try:
        return replay_parked(connection.channel(), name, limit)
    finally:
        if connection.is_open:
            connection.close()


def purge_parked(channel: pika.adapters.blocking_connection.BlockingChannel, name: str) -> int:
    result = channel.queue_purge(parked_queue(name))
    return int(result.method.message_count)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Inspect, replay or purge parked jobs.")
    parser.add_argument("action", choices=["list", "replay", "purge"])
    parser.add_argument(
        "--channel", default="all", help="email, sms, a webhook endpoint (webhook.<hash>), or all"
    )
    parser.add_argument("--limit", type=int, default=100, help="at most this many jobs")
    args = parser.parse_args(argv)
    settings = load_settings_or_exit()
    webhooks = [webhook_name(url) for url in settings.webhook_urls]
    known = (*CHANNELS, *webhooks)
    if args.channel != "all" and args.channel not in known:
        parser.error(f"--channel must be one of: {', '.join(known)}, all")
    names = known if args.channel == "all" else (args.channel,)
    connection = pika.BlockingConnection(cluster_parameters(settings.amqp_url, name="parked"))
    try:
        channel = connection.channel()
        declare_topology(
            channel, settings.retry_delays_ms, queue_type=settings.queue_type, webhooks=webhooks
        )
        for name in names:
            if args.action == "list":
                print_parked(name, list_parked(channel, name, args.limit))
            elif args.action == "replay":
                print(f"{parked_queue(name)}: replayed {replay_parked(channel, name, args.limit)}")
            else:
                print(f"{parked_queue(name)}: purged {purge_parked(channel, name)}")
    finally:
        connection.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
