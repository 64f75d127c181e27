"""The Celery peer: the same welcome-email send, done by a Celery worker, for comparison.

    celery -A bench.celery_peer:app worker -P gevent -c 10 -Q offload.bench.celery

It is configured like Offload's own email consumer, from the same environment (AMQP_URL,
SMTP_HOST, SMTP_PORT, MAIL_FROM, CONSUMER_CONCURRENCY, CONSUMER_PREFETCH) through
`load_settings`, and made as comparable as Celery allows: publisher confirms on
(`confirm_publish`), persistent messages on a durable queue, ack after the work (`acks_late`),
the same prefetch, and the same `SmtpEmailSender` to the same sink. Offload's consumer also
reads and writes its ledger row per job; Celery's task does not (it has no ledger).
"""

from __future__ import annotations

from typing import Any

from celery import Celery

from app.config import Settings, load_settings
from app.jobs import EmailJob
from services.email import SmtpEmailSender

QUEUE = "offload.bench.celery"
TASK_NAME = "bench.send_email"


def make_celery(settings: Settings) -> Celery:
    celery = Celery("offload-bench-peer", broker=settings.amqp_url, set_as_current=False)
    celery.conf.update(
        broker_transport_options={"confirm_publish": True},
        broker_connection_retry_on_startup=True,
        task_default_queue=QUEUE,
        task_serializer="json",
        accept_content=["json"],
        task_ignore_result=True,
        task_acks_late=True,
        # Celery prefetches multiplier x concurrency messages; Offload's consumer holds
        # CONSUMER_PREFETCH across its CONSUMER_CONCURRENCY workers.
        worker_prefetch_multiplier=max(
            1, settings.consumer_prefetch // settings.consumer_concurrency
        ),
        worker_hijack_root_logger=False,
        worker_send_task_events=False,
    )
    sender = SmtpEmailSender.from_settings(settings)

    @celery.task(name=TASK_NAME, ignore_result=True)
    def send_email(notification_id: str, to: str, subject: str, text: str) -> None:
        sender.send(EmailJob(notification_id=notification_id, to=to, subject=subject, text=text))

    return celery


def __getattr__(name: str) -> Any:
    # The worker looks up `app` after importing this module; it is built then, from the
    # environment, never at import.
    if name == "app":
        application = make_celery(load_settings())
        globals()["app"] = application
        return application
    raise AttributeError(name)
