"""Process entry points for the workers: `python -m services.workers email|sms|relay`, or the
console scripts `offload-email`, `offload-sms`, `offload-relay`.

gevent patches first, before anything imports socket or threading, so smtplib, requests and
pika all yield to the hub and one process runs `--concurrency` sends at once.
"""

from gevent import monkey

monkey.patch_all()

import argparse  # noqa: E402
import logging  # noqa: E402
import sys  # noqa: E402

from app.config import Settings, load_settings_or_exit  # noqa: E402
from app.db import make_engine, make_session_factory  # noqa: E402
from app.hubwatch import freeze_startup_heap  # noqa: E402
from app.logs import configure_logging  # noqa: E402
from app.messaging import PikaPublisher  # noqa: E402
from app.shutdown import on_stop_signals  # noqa: E402
from services.consumer import Consumer, install_signal_handlers  # noqa: E402
from services.email import SmtpEmailSender  # noqa: E402
from services.handlers import RetryPolicy  # noqa: E402
from services.metrics import serve_metrics  # noqa: E402
from services.relay import Relay  # noqa: E402
from services.sms import HttpSmsSender  # noqa: E402

log = logging.getLogger("offload.worker")


def run_consumer(settings: Settings, channel: str, concurrency: int, prefetch: int) -> int:
    sender = (
        SmtpEmailSender.from_settings(settings)
        if channel == "email"
        else HttpSmsSender.from_settings(settings)
    )
    consumer = Consumer(
        channel=channel,
        amqp_url=settings.amqp_url,
        sender=sender,
        sessions=make_session_factory(
            make_engine(settings.database_url, busy_timeout=settings.database_busy_timeout)
        ),
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
        make_session_factory(
            make_engine(settings.database_url, busy_timeout=settings.database_busy_timeout)
        ),
        PikaPublisher(
            settings.amqp_url,
            retry_delays_ms=settings.retry_delays_ms,
            queue_type=settings.queue_type,
            name="offload-relay",
        ),
        interval=settings.relay_interval,
        batch_size=settings.relay_batch_size,
        grace_seconds=settings.relay_grace_seconds,
        publish_timeout=max(settings.publish_timeout, 5.0),
        sweep_after_seconds=settings.relay_sweep_after_seconds,
    )
    on_stop_signals(relay.request_stop)
    print(f"offload relay started (every {settings.relay_interval}s)", flush=True)
    freeze_startup_heap()
    relay.run()
    return 0


def main(argv: list[str] | None = None, *, worker: str | None = None) -> int:
    """`python -m services.workers email|sms|relay`; the console scripts fix `worker`."""
    descriptions = {
        None: "Run an Offload worker process.",
        "email": "Consume email jobs and send them over SMTP.",
        "sms": "Consume SMS jobs and send them through the HTTP gateway.",
        "relay": "Publish the outbox rows that the web process could not publish.",
    }
    parser = argparse.ArgumentParser(description=descriptions[worker])
    if worker is None:
        parser.add_argument(
            "worker", choices=["email", "sms", "relay"], help="a job type to consume, or the relay"
        )
    if worker != "relay":
        parser.add_argument("--concurrency", type=int, help="sends at once (CONSUMER_CONCURRENCY)")
        parser.add_argument("--prefetch", type=int, help="unacked jobs held (CONSUMER_PREFETCH)")
    args = parser.parse_args(argv)
    worker = worker or args.worker
    settings = load_settings_or_exit()
    configure_logging(settings.log_level)
    serve_metrics(settings.host, settings.metrics_port)
    if worker == "relay":
        return run_relay(settings)
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


if __name__ == "__main__":
    sys.exit(main())
