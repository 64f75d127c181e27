"""Process entry points for the workers: `python -m services.workers email|sms|relay|webhooks`,
or the console scripts `offload-email`, `offload-sms`, `offload-relay`, `offload-webhooks`.

gevent patches first, before anything imports socket or threading, so smtplib, requests and
pika all yield to the hub and one process runs `--concurrency` sends at once.
"""

from gevent import monkey

monkey.patch_all()

import argparse  # noqa: E402
import logging  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402

import gevent  # noqa: E402
import gevent.event  # noqa: E402
from sqlalchemy.engine import Engine  # noqa: E402

from app.config import Settings, load_settings_or_exit, webhook_secret_bytes  # noqa: E402
from app.db import checkpoint_off_the_loop, make_engine, make_session_factory  # noqa: E402
from app.hubwatch import freeze_startup_heap  # noqa: E402
from app.jobs import webhook_name  # noqa: E402
from app.logs import configure_logging  # noqa: E402
from app.messaging import PikaPublisher  # noqa: E402
from app.shutdown import on_stop_signals  # noqa: E402
from services.consumer import Consumer, install_signal_handlers  # noqa: E402
from services.email import SmtpEmailSender  # noqa: E402
from services.handlers import RetryPolicy  # noqa: E402
from services.metrics import serve_metrics  # noqa: E402
from services.relay import Relay  # noqa: E402
from services.sms import HttpSmsSender  # noqa: E402
from services.webhooks import WebhookHandler  # noqa: E402

log = logging.getLogger("offload.worker")


def serving_engine(settings: Settings) -> Engine:
    """The database engine of a worker: SQLite's checkpoints off its event loop (app/db.py)."""
    engine = make_engine(
        settings.database_url,
        busy_timeout=settings.database_busy_timeout,
        socket_timeout=settings.database_timeout,
    )
    checkpoint_off_the_loop(engine)
    return engine


def run_consumer(settings: Settings, channel: str, concurrency: int, prefetch: int) -> int:
    sender = (
        # One idle SMTP session kept per concurrent send: with fewer, every burst of sends
        # wider than the pool closes sessions that the next burst opens again.
        SmtpEmailSender.from_settings(settings, max_idle_sessions=concurrency)
        if channel == "email"
        else HttpSmsSender.from_settings(settings)
    )
    consumer = Consumer(
        channel=channel,
        amqp_url=settings.amqp_url,
        sender=sender,
        sessions=make_session_factory(serving_engine(settings)),
        policy=RetryPolicy(
            settings.max_attempts, settings.retry_delays_ms, settings.send_lease_seconds
        ),
        concurrency=concurrency,
        prefetch=prefetch,
        queue_type=settings.queue_type,
    )
    install_signal_handlers(consumer)
    print(
        f"offload {channel} consumer started (concurrency={concurrency}, prefetch={prefetch})",
        flush=True,
    )
    freeze_startup_heap()
    consumer.run()
    log.info("%s consumer stopped", channel)
    return 0


def run_relay(settings: Settings) -> int:
    relay = Relay(
        make_session_factory(serving_engine(settings)),
        PikaPublisher(
            settings.amqp_url,
            retry_delays_ms=settings.retry_delays_ms,
            queue_type=settings.queue_type,
            name="offload-relay",
            # Declared before the first event goes out, so no endpoint misses one because its
            # worker had not connected yet.
            webhooks=[webhook_name(url) for url in settings.webhook_urls],
        ),
        interval=settings.relay_interval,
        batch_size=settings.relay_batch_size,
        grace_seconds=settings.relay_grace_seconds,
        publish_timeout=max(settings.publish_timeout, 5.0),
        sweep_after_seconds=settings.relay_sweep_after_seconds,
        event_retention_seconds=settings.event_retention_days * 86400.0,
    )
    on_stop_signals(relay.request_stop)
    print(f"offload relay started (every {settings.relay_interval}s)", flush=True)
    freeze_startup_heap()
    relay.run()
    return 0


def run_webhooks(settings: Settings, concurrency: int, prefetch: int) -> int:
    """One consumer per WEBHOOK_URLS endpoint, each on its own queue and connection, in this
    one process (greenlets); with no endpoint, idle until stopped (a Procfile runner stops
    every process when one exits)."""
    sessions = make_session_factory(serving_engine(settings))
    policy = RetryPolicy(
        settings.max_attempts, settings.retry_delays_ms, settings.send_lease_seconds
    )
    names = [webhook_name(url) for url in settings.webhook_urls]
    consumers = [
        Consumer(
            channel=name,
            amqp_url=settings.amqp_url,
            handler=WebhookHandler(
                name=name,
                url=url,
                key=webhook_secret_bytes(settings.webhook_secret),
                sessions=sessions,
                policy=policy,
                max_connections=concurrency,
            ),
            sessions=sessions,
            policy=policy,
            concurrency=concurrency,
            prefetch=prefetch,
            queue_type=settings.queue_type,
            webhooks=names,
        )
        for name, url in zip(names, settings.webhook_urls, strict=True)
    ]
    stopped = gevent.event.Event()

    def stop() -> None:
        for consumer in consumers:
            consumer.request_stop()
        stopped.set()

    on_stop_signals(stop, left_behind="the broker requeues unacked events")
    print(
        f"offload webhooks worker started ({len(consumers)} endpoints: {', '.join(names)})"
        if consumers
        else "offload webhooks worker started (WEBHOOK_URLS is empty: idle)",
        flush=True,
    )
    freeze_startup_heap()
    if not consumers:
        stopped.wait()
        return 0
    gevent.joinall([gevent.spawn(consumer.run) for consumer in consumers])
    log.info("webhooks worker stopped")
    return 0


WORKERS = ["email", "sms", "relay", "webhooks"]


def yield_cpu_to_the_web(nicer_by: int) -> None:
    """Lower this worker's CPU priority by WORKER_NICE steps.

    A worker's jobs can wait a few milliseconds; a request cannot. Where the workers share
    cores with the web (one machine, `make run`, the bench), the scheduler then gives the web a
    core first. On a machine of their own it changes nothing.

    A process's nice value only weighs against the processes of its own autogroup (Linux's
    `CONFIG_SCHED_AUTOGROUP`, on by default in Debian's kernels): one per session. A worker
    started in a session of its own (a supervisor's `setsid`, as `make run` and the bench
    start every process) competes with the web as a group, and its nice value changed nothing:
    the group's must be lowered too (/proc/self/autogroup, allowed without privilege in that
    direction). A worker sharing the web's session keeps the group alone, or it would lower
    the web with it. Under systemd each unit is a cgroup of its own and the units' CPUWeight
    decides instead (deploy/systemd).

    `make bench`, c=50 queued, before the autogroup was lowered: 511-538 requests a second in
    four runs, at `WORKER_NICE` 10 and 0 alike; after, 559 and 602.
    """
    if not nicer_by:
        return
    os.nice(nicer_by)
    if os.getsid(0) != os.getpid():
        return
    try:
        with open("/proc/self/autogroup", "w") as autogroup:
            autogroup.write(str(nicer_by))
    except OSError:
        log.debug("no autogroup to lower (not Linux, or autogrouping is off)", exc_info=True)


def main(argv: list[str] | None = None, *, worker: str | None = None) -> int:
    """`python -m services.workers email|sms|relay|webhooks`; the console scripts fix `worker`."""
    descriptions = {
        None: "Run an Offload worker process.",
        "email": "Consume email jobs and send them over SMTP.",
        "sms": "Consume SMS jobs and send them through the HTTP gateway.",
        "relay": "Publish the outbox rows that the web process could not publish.",
        "webhooks": "POST the user events to the WEBHOOK_URLS endpoints, signed.",
    }
    parser = argparse.ArgumentParser(description=descriptions[worker])
    if worker is None:
        parser.add_argument(
            "worker",
            choices=WORKERS,
            help="a job type to consume, the relay, or the webhooks",
        )
    if worker != "relay":
        parser.add_argument("--concurrency", type=int, help="sends at once (CONSUMER_CONCURRENCY)")
        parser.add_argument("--prefetch", type=int, help="unacked jobs held (CONSUMER_PREFETCH)")
    args = parser.parse_args(argv)
    worker = worker or args.worker
    settings = load_settings_or_exit()
    configure_logging(settings.log_level)
    yield_cpu_to_the_web(settings.worker_nice)
    serve_metrics(settings.host, settings.metrics_port)
    if worker == "relay":
        return run_relay(settings)
    if worker == "webhooks":
        return run_webhooks(
            settings,
            args.concurrency or settings.consumer_concurrency,
            args.prefetch or settings.consumer_prefetch,
        )
    return run_consumer(
        settings,
        worker,
        args.concurrency or settings.consumer_concurrency,
        args.prefetch or settings.consumer_prefetch,
    )


def email_main() -> int:
    """The `offload-email` console script."""
    return main(worker="email")


def sms_main() -> int:
    """The `offload-sms` console script."""
    return main(worker="sms")


def relay_main() -> int:
    """The `offload-relay` console script."""
    return main(worker="relay")


def webhooks_main() -> int:
    """The `offload-webhooks` console script."""
    return main(worker="webhooks")


if __name__ == "__main__":
    sys.exit(main())
