"""Offload's email consumer against a Celery worker on the same sends, in one run, twice.

Each side gets the same number of welcome emails, in rounds ordered A B B A so drift hits both
alike. Each round publishes its jobs one at a time from this process, timing every publish
(Offload: `PikaPublisher.publish` with publisher confirms; Celery: `delay()` with
`confirm_publish`), and ends when the SMTP sink has all of them.

1. At the sink's delay (50 ms by default), with that side's consumer running while the jobs are
   published: drain rate = jobs / (first publish until the last message was accepted).
2. With the sink at 0 ms, so the figures are the machinery's own overhead, not the sink's wait:
   the jobs are published while that side's consumer is stopped (a backlog), then it is
   started; drain rate = the sink's arrival rate from the first message to the last (the
   consumer's start-up is not counted, and publishing cannot be the bottleneck). The sink is
   put back at its delay afterwards.

For Offload the jobs belong to real notification rows (written with `register_user`, the SMS
row closed as skipped), so the consumer's ledger check and update run as in production.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import gevent
from sqlalchemy import update

from app.config import Settings, load_settings
from app.db import make_engine, make_session_factory, session_scope
from app.dispatch import BASELINE_ERROR
from app.jobs import EmailJob, job_from_dict
from app.ledger import mark_queued
from app.messaging import PikaPublisher
from app.models import Notification, User, new_id
from app.registration import Registration, build_notifications, register_user
from bench.celery_peer import QUEUE, TASK_NAME, make_celery
from bench.sinkwatch import wait_for_all
from bench.stats import finite_or_none, summarize
from devstack import PROJECT_ROOT
from devstack.processes import terminate

if TYPE_CHECKING:
    from sqlalchemy.orm import Session, sessionmaker

    from bench.runner import BenchSession

WARMUP_JOBS = 10
WORKER_START_TIMEOUT = 60.0
PUBLISH_TIMEOUT = 5.0
# Publishes that each wait for their confirm, shown beside the request path's figure.
CONFIRMED_JOBS = 200


class PeerError(RuntimeError):
    """The Celery worker did not start, or jobs did not arrive; the message says which."""


def start_celery_worker(session: BenchSession, concurrency: int) -> subprocess.Popen[bytes]:
    log_path = session.stack.log_dir / "celery.log"
    with open(log_path, "ab") as log:
        return subprocess.Popen(
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "bench.celery_peer:app",
                "worker",
                "-P",
                "gevent",
                "-c",
                str(concurrency),
                "-Q",
                QUEUE,
                "-n",
                f"offload-bench-{os.getpid()}@localhost",
                "--without-gossip",
                "--without-mingle",
                "--without-heartbeat",
                "-l",
                "WARNING",
            ],
            cwd=PROJECT_ROOT,
            env=session.stack.environment(),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


class Sides:
    """What each side needs to publish one round of email jobs and time it."""

    def __init__(self, session: BenchSession, settings: Settings) -> None:
        self.session = session
        self.settings = settings
        self.engine = make_engine(session.stack.database_url)
        self.sessions: sessionmaker[Session] = make_session_factory(self.engine)
        self.publisher = PikaPublisher(
            session.stack.amqp_url, retry_delays_ms=settings.retry_delays_ms, name="offload-bench"
        )
        self.celery = make_celery(settings)
        self.task = self.celery.tasks[TASK_NAME]
        self.confirmed = 0  # confirms received for publishes that did not wait for them

    def close(self) -> None:
        self.publisher.close()
        self.celery.close()
        self.engine.dispose()

    def next_registrations(self, count: int) -> list[Registration]:
        users = self.session.users
        first = self.session.next_index
        self.session.next_index += count
        return [
            Registration(name=f"Peer User {i}", email=users.email(i), phone=users.phone(i))
            for i in range(first, first + count)
        ]

    def offload_jobs(self, db: Session, count: int) -> tuple[list[EmailJob], list[Notification]]:
        """Real users and notification rows; only the email goes out (the SMS row is skipped)."""
        jobs: list[EmailJob] = []
        emails: list[Notification] = []
        sms: list[Notification] = []
        for registration in self.next_registrations(count):
            registered = register_user(db, self.settings, registration)
            for notification in registered.notifications:
                if notification.channel == "email":
                    job = job_from_dict(notification.payload)
                    assert isinstance(job, EmailJob)
                    jobs.append(job)
                    emails.append(notification)
                else:
                    sms.append(notification)
        # Only the email is compared: the SMS rows are closed as the insert-only baseline's are.
        db.execute(
            update(Notification)
            .where(Notification.id.in_([n.id for n in sms]))
            .values(status="skipped", last_error=BASELINE_ERROR)
        )
        db.commit()
        return jobs, emails

    def celery_jobs(self, count: int) -> list[EmailJob]:
        """The same welcome emails, for users that exist only in the message."""
        jobs: list[EmailJob] = []
        for registration in self.next_registrations(count):
            user = User(
                id=new_id(),
                name=registration.name,
                email=registration.email,
                phone=registration.phone,
            )
            job = job_from_dict(build_notifications(self.settings, user, "000000")[0].payload)
            assert isinstance(job, EmailJob)
            jobs.append(job)
        return jobs

    def publish_offload(self, job: EmailJob) -> None:
        """What Offload's request path pays: the frames. The confirm comes later, on the hub."""
        self.publisher.publish([job], timeout=PUBLISH_TIMEOUT, on_confirmed=self.count_confirm)

    def count_confirm(self) -> None:
        self.confirmed += 1

    def publish_offload_confirmed(self, job: EmailJob) -> None:
        """The broker's whole round trip: publish, then wait for its confirm (the relay's way)."""
        self.publisher.publish([job], timeout=PUBLISH_TIMEOUT)

    def confirmed_round(self, count: int) -> list[float]:
        """Per-publish ms when each publish waits for its confirm (for the report, not a target)."""
        with session_scope(self.sessions) as db:
            jobs, notifications = self.offload_jobs(db, count)
            latencies = []
            for job in jobs:
                begun = time.perf_counter()
                self.publish_offload_confirmed(job)
                latencies.append((time.perf_counter() - begun) * 1000)
            mark_queued(db, notifications)
        self.wait_received("offload", jobs, timeout=self.session.delivery_timeout(count))
        return latencies

    def publish_celery(self, job: EmailJob) -> None:
        self.task.delay(job.notification_id, job.to, job.subject, job.text)

    def publish_round(self, side: str, count: int) -> tuple[list[EmailJob], list[float], float]:
        """Publish `count` jobs for `side`, timing each; (jobs, ms per publish, first's start)."""
        with session_scope(self.sessions) as db:
            if side == "offload":
                jobs, notifications = self.offload_jobs(db, count)
                publish = self.publish_offload
            else:
                jobs, notifications = self.celery_jobs(count), []
                publish = self.publish_celery
            latencies: list[float] = []
            first = time.time()
            expected_confirms = self.confirmed + len(notifications)
            for job in jobs:
                begun = time.perf_counter()
                publish(job)
                latencies.append((time.perf_counter() - begun) * 1000)
                # Let the hub write the frames and take confirms, as a web process's hub does
                # between requests (not timed: the request does not wait for it either).
                gevent.sleep(0)
            deadline = time.monotonic() + PUBLISH_TIMEOUT * 10
            while self.confirmed < expected_confirms and time.monotonic() < deadline:
                gevent.sleep(0.001)
            if notifications:
                # As the request path does after its publish: the relay leaves queued rows alone.
                mark_queued(db, notifications)
        return jobs, latencies, first

    def wait_received(self, side: str, jobs: list[EmailJob], timeout: float) -> list[float]:
        """When the sink received each job (sorted); PeerError if any never arrived."""
        tail = self.session.tails["email"]
        recipients = [job.to for job in jobs]
        missing = wait_for_all({"email": tail}, {"email": recipients}, timeout=timeout)["email"]
        if missing:
            raise PeerError(f"{side}: {missing} of {len(jobs)} emails never reached the sink")
        return sorted(tail.received_at[to] for to in recipients)

    def run_round(self, side: str, count: int, timeout: float) -> dict[str, Any]:
        """Publish with `side`'s consumer running; done when the sink has accepted the last."""
        jobs, latencies, first = self.publish_round(side, count)
        received = self.wait_received(side, jobs, timeout)
        # The sink records arrival; it accepts the message `delay` later.
        done = received[-1] + self.session.delay_ms / 1000
        span = received[-1] - received[0]
        return {
            "side": side,
            "jobs": count,
            "publish_ms": latencies,
            "seconds": done - first,
            "steady": (count - 1) / span if count > 1 and span > 0 else None,
        }

    def run_backlog_round(self, side: str, count: int, concurrency: int) -> dict[str, Any]:
        """Publish with `side`'s consumer stopped, then start it and time the drain."""
        stack = self.session.stack
        if side == "offload":
            stack.stop_process("email")
        jobs, latencies, _first = self.publish_round(side, count)
        worker = None
        try:
            if side == "offload":
                stack.start_worker("email")
            else:
                worker = start_celery_worker(self.session, concurrency)
            received = self.wait_received(
                side, jobs, timeout=WORKER_START_TIMEOUT + self.session.delivery_timeout(count)
            )
        finally:
            if worker is not None:
                terminate(worker)
        span = received[-1] - received[0]
        return {
            "side": side,
            "jobs": count,
            "publish_ms": latencies,
            # from the first arrival to the last: n - 1 intervals
            "seconds": span * count / (count - 1) if count > 1 and span > 0 else None,
            "steady": (count - 1) / span if count > 1 and span > 0 else None,
        }


def run_peer(session: BenchSession, jobs: int) -> dict[str, Any]:
    """Both comparisons: at the sink's delay (the top-level figures) and at 0 ms (`zero_delay`)."""
    settings = load_settings(session.stack.environment())
    concurrency = session.consumer_concurrency
    session.wait_idle()
    session.progress(
        f"peer: {jobs} email jobs each for Offload's consumer and a Celery gevent worker "
        f"(concurrency {concurrency}), sink at {session.delay_ms:g} ms, then at 0 ms"
    )
    half = max(jobs // 2, 1)
    order = ("offload", "celery", "celery", "offload")
    sides = Sides(session, settings)
    try:
        worker = start_celery_worker(session, concurrency)
        try:
            # Warm both: connections open, the Celery worker up (its start is not timed).
            for side in ("offload", "celery"):
                sides.run_round(side, WARMUP_JOBS, timeout=WORKER_START_TIMEOUT)
            rounds = [
                sides.run_round(side, half, timeout=session.delivery_timeout(half))
                for side in order
            ]
        finally:
            terminate(worker)  # SIGTERM: Celery's warm shutdown
        summary = summarize_rounds(session, rounds, half, concurrency, session.delay_ms)
        progress_line(session, summary)
        with sink_delay(session, 0.0):
            zero = [sides.run_backlog_round(side, half, concurrency) for side in order]
            confirmed = sides.confirmed_round(min(half, CONFIRMED_JOBS))
        summary["zero_delay"] = summarize_rounds(session, zero, half, concurrency, 0.0)
        summary["zero_delay"]["method"] = "backlog"
        waited = summarize(confirmed)
        summary["zero_delay"]["offload"]["publish_confirmed_ms"] = {
            k: finite_or_none(waited[k]) for k in ("p50", "p95", "p99", "max")
        }
        progress_line(session, summary["zero_delay"])
    finally:
        sides.close()
    return summary


@contextlib.contextmanager
def sink_delay(session: BenchSession, delay_ms: float) -> Iterator[None]:
    """The SMTP sink at `delay_ms` inside the block (same port, same record file).

    The email consumer is restarted with each sink change: its pooled SMTP sessions belong to
    the sink process that is gone.
    """
    stack = session.stack
    before = float(stack.config.sink_delay_ms)
    stack.config.sink_delay_ms = delay_ms
    stack.restart_sink("smtp")
    stack.stop_process("email")
    stack.start_worker("email")
    try:
        yield
    finally:
        stack.config.sink_delay_ms = before
        stack.restart_sink("smtp")
        stack.stop_process("email")
        stack.start_worker("email")


def summarize_rounds(
    session: BenchSession,
    rounds: list[dict[str, Any]],
    half: int,
    concurrency: int,
    delay_ms: float,
) -> dict[str, Any]:
    summary: dict[str, Any] = {
        "jobs_per_side": 2 * half,
        "concurrency": concurrency,
        "prefetch": int(session.stack.config.consumer_prefetch),
        "sink_delay_ms": delay_ms,
        "order": [r["side"] for r in rounds],
    }
    for side in ("offload", "celery"):
        mine = [r for r in rounds if r["side"] == side]
        publish = summarize([ms for r in mine for ms in r["publish_ms"]])
        seconds = [r["seconds"] for r in mine]
        summary[side] = {
            "publish_ms": {k: finite_or_none(publish[k]) for k in ("p50", "p95", "p99", "max")},
            "drain_jobs_per_s": finite_or_none(sum(r["jobs"] for r in mine) / sum(seconds))
            if all(seconds)
            else None,
            "steady_jobs_per_s": [
                finite_or_none(r["steady"]) if r["steady"] else None for r in mine
            ],
        }
    return summary


def progress_line(session: BenchSession, summary: dict[str, Any]) -> None:
    session.progress(
        "peer at {d:g} ms: publish p50 Offload {o:.2f} ms vs Celery {c:.2f} ms; drain {od:.0f} "
        "vs {cd:.0f} jobs/s".format(
            d=summary["sink_delay_ms"],
            o=summary["offload"]["publish_ms"]["p50"] or 0,
            c=summary["celery"]["publish_ms"]["p50"] or 0,
            od=summary["offload"]["drain_jobs_per_s"] or 0,
            cd=summary["celery"]["drain_jobs_per_s"] or 0,
        )
    )
