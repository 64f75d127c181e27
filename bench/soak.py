"""The soak: many registrations under faults, then count what reached the sinks.

    python -m bench.soak --registrations 10000 --concurrency 100

Registers N users in queued mode at the given concurrency against a fresh stack whose sinks fail
a share of requests; a third of the way in, the broker is restarted; two thirds in, the email
consumer is killed with SIGKILL and started again. Then it waits for the drain and prints:
accepted, delivered, lost, duplicated, parked, and how long the drain took. It exits non-zero if
anything was lost or sent twice.
"""

from __future__ import annotations

import argparse
import itertools
import json
import shutil
import signal
import sys
import threading
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pika
import requests

from app.jobs import CHANNELS, parked_queue
from app.topology import cluster_parameters
from bench.cluster_shape import cluster_for_soak, inject_cluster_fault
from bench.users import UserFactory, capacity
from devstack.cluster import Cluster
from devstack.stack import Stack, StackConfig


@dataclass
class SoakReport:
    registrations: int
    concurrency: int
    failure_rate: float
    accepted: int = 0
    request_errors: int = 0
    emails_delivered: int = 0
    sms_delivered: int = 0
    lost_emails: int = 0
    lost_sms: int = 0
    duplicated_emails: int = 0
    duplicated_sms: int = 0
    recognised_resends: int = 0
    parked: int = 0
    load_seconds: float = 0.0
    drain_seconds: float = 0.0
    drained: bool = False
    faults: list[str] = field(default_factory=list)

    @property
    def lost(self) -> int:
        return self.lost_emails + self.lost_sms

    @property
    def duplicated(self) -> int:
        return self.duplicated_emails + self.duplicated_sms


def soak_users(count: int) -> list[dict[str, str]]:
    """Distinct valid registrations from the middle of the bench's number space (the tests'
    own registrations take theirs from the start)."""
    factory = UserFactory(nonce=f"soak{int(time.time())}", offset=capacity() // 2)
    return [factory.user(n) for n in range(count)]


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _distinct_deliveries(stack: Stack | Cluster, kind: str, recipients: set[str]) -> Counter[str]:
    counts: Counter[str] = Counter()
    for record in stack.sinks[kind].records():
        if record["to"] in recipients and not record.get("duplicate"):
            counts[record["to"]] += 1
    return counts


def _parked(stack: Stack | Cluster) -> int:
    connection = pika.BlockingConnection(cluster_parameters(stack.amqp_url, name="soak"))
    try:
        channel = connection.channel()
        return sum(
            int(channel.queue_declare(parked_queue(c), passive=True).method.message_count)
            for c in CHANNELS
        )
    finally:
        connection.close()


def run_soak(
    stack: Stack | Cluster,
    *,
    registrations: int,
    concurrency: int,
    failure_rate: float,
    drain_timeout: float = 600.0,
) -> SoakReport:
    report = SoakReport(registrations, concurrency, failure_rate)
    users = soak_users(registrations)
    stack.restart_sink("smtp", failure_rate=failure_rate)
    stack.restart_sink("sms", failure_rate=failure_rate)
    next_index = itertools.count()
    lock = threading.Lock()
    accepted: list[dict[str, str]] = []
    done = threading.Event()
    # The cluster answers over TLS with its own throwaway certificate.
    verify: str | bool = str(stack.cert_path) if isinstance(stack, Cluster) else True

    def client() -> None:
        with requests.Session() as http:
            while (i := next(next_index)) < registrations:
                try:
                    response = http.post(
                        f"{stack.base_url}/api/users?mode=queued",
                        json=users[i],
                        timeout=30,
                        verify=verify,
                    )
                    ok = response.status_code == 201
                except requests.RequestException:
                    ok = False
                with lock:
                    if ok:
                        accepted.append(users[i])
                    else:
                        report.request_errors += 1

    def inject_faults() -> None:
        for fraction, fault in ((1 / 3, "broker restart"), (2 / 3, "email consumer SIGKILL")):
            while len(accepted) + report.request_errors < registrations * fraction:
                if done.wait(0.05):
                    return
            count = len(accepted)
            _say(f"  fault: {fault} after {count} registrations")
            if isinstance(stack, Cluster):
                done_what = inject_cluster_fault(stack, fault)
                report.faults.append(f"{done_what} after {count} registrations")
                continue
            report.faults.append(f"{fault} after {count} registrations")
            assert stack.node is not None
            if fault == "broker restart":
                stack.node.restart()
            else:
                stack.signal("email", signal.SIGKILL)
                stack.stop_process("email")
                stack.start_worker("email")

    started = time.monotonic()
    threads = [threading.Thread(target=client, daemon=True) for _ in range(concurrency)]
    faults = threading.Thread(target=inject_faults, daemon=True)
    for thread in [*threads, faults]:
        thread.start()
    while any(t.is_alive() for t in threads):
        time.sleep(1)
        rate = len(accepted) / (time.monotonic() - started)
        _say(
            f"  load: {len(accepted)}/{registrations} accepted, "
            f"{report.request_errors} errors, {rate:.0f}/s"
        )
    done.set()
    faults.join()
    report.load_seconds = time.monotonic() - started
    report.accepted = len(accepted)

    emails = {u["email"] for u in accepted}
    phones = {u["phone"] for u in accepted}
    drain_started = time.monotonic()
    while time.monotonic() - drain_started < drain_timeout:
        email_counts = _distinct_deliveries(stack, "smtp", emails)
        sms_counts = _distinct_deliveries(stack, "sms", phones)
        _say(
            f"  drain: {len(email_counts)}/{len(emails)} emails, "
            f"{len(sms_counts)}/{len(phones)} SMS delivered"
        )
        if len(email_counts) == len(emails) and len(sms_counts) == len(phones):
            report.drained = True
            break
        time.sleep(1)
    report.drain_seconds = time.monotonic() - drain_started
    time.sleep(1)  # a late duplicate would land right behind the drain

    email_counts = _distinct_deliveries(stack, "smtp", emails)
    sms_counts = _distinct_deliveries(stack, "sms", phones)
    report.emails_delivered = len(email_counts)
    report.sms_delivered = len(sms_counts)
    report.lost_emails = len(emails) - len(email_counts)
    report.lost_sms = len(phones) - len(sms_counts)
    report.duplicated_emails = sum(1 for n in email_counts.values() if n > 1)
    report.duplicated_sms = sum(1 for n in sms_counts.values() if n > 1)
    report.recognised_resends = sum(
        1
        for kind, recipients in (("smtp", emails), ("sms", phones))
        for r in stack.sinks[kind].records()
        if r["to"] in recipients and r.get("duplicate")
    )
    report.parked = _parked(stack)
    stack.restart_sink("smtp")
    stack.restart_sink("sms")
    return report


def format_report(report: SoakReport) -> str:
    rows = [
        ("registrations requested", report.registrations),
        ("registrations accepted (201)", report.accepted),
        ("request errors", report.request_errors),
        ("emails delivered", report.emails_delivered),
        ("SMS delivered", report.sms_delivered),
        ("lost (email + SMS)", report.lost),
        ("duplicated (email + SMS)", report.duplicated),
        ("resends recognised by the receiver", report.recognised_resends),
        ("parked", report.parked),
        ("load time", f"{report.load_seconds:.1f} s"),
        ("drain time after the load", f"{report.drain_seconds:.1f} s"),
    ]
    width = max(len(name) for name, _ in rows)
    lines = [
        f"soak: concurrency {report.concurrency}, sinks failing "
        f"{report.failure_rate:.0%} of requests; faults: {'; '.join(report.faults)}"
    ]
    lines += [f"  {name:<{width}}  {value}" for name, value in rows]
    return "\n".join(lines)


def stack_for_soak(run_dir: Path, consumer_concurrency: int, delay_ms: float) -> Stack:
    shutil.rmtree(run_dir, ignore_errors=True)
    config = StackConfig.on_free_ports(
        run_dir,
        sink_delay_ms=delay_ms,
        consumer_concurrency=consumer_concurrency,
        consumer_prefetch=consumer_concurrency * 2,
        extra_env={
            # Enough attempts that a 5% failure rate never exhausts them (0.05^12), short
            # backoff and lease so the soak drains in minutes.
            "RETRY_DELAYS_MS": "250,500,1000,2000",
            "MAX_ATTEMPTS": "12",
            "SEND_LEASE_SECONDS": "5",
            # Longer than SMTP_TIMEOUT + SMS_TIMEOUT (the longest inline send), so it starts.
            "SMTP_TIMEOUT": "2",
            "SMS_TIMEOUT": "2",
            "RELAY_GRACE_SECONDS": "5",
            "RELAY_INTERVAL": "0.5",
            "RATE_LIMIT_ENABLED": "false",
            "WEB_POOL_SIZE": "2000",
        },
    )
    return Stack(config)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Soak Offload under faults and count.")
    parser.add_argument("--registrations", type=int, default=10_000)
    parser.add_argument("--concurrency", type=int, default=100)
    parser.add_argument("--failure-rate", type=float, default=0.05)
    parser.add_argument("--consumer-concurrency", type=int, default=20)
    parser.add_argument("--delay-ms", type=float, default=10.0, help="sink delay, each")
    parser.add_argument("--run-dir", default=None, help="default .run/soak[-cluster]")
    parser.add_argument("--out", default=None, help="default bench-results/soak[-cluster].json")
    parser.add_argument(
        "--cluster",
        action="store_true",
        help="on make cluster's shape (nginx, gunicorn, PostgreSQL, 3 RabbitMQ nodes), with a "
        "SIGKILL of the quorum queues' leader node in place of the broker restart",
    )
    args = parser.parse_args(argv)
    args.run_dir = args.run_dir or f".run/soak{'-cluster' if args.cluster else ''}"
    _say(f"starting a fresh {'cluster' if args.cluster else 'stack'} in {args.run_dir}")
    make = cluster_for_soak if args.cluster else stack_for_soak
    if args.out is None:
        args.out = f"bench-results/soak{'-cluster' if args.cluster else ''}.json"
    with make(Path(args.run_dir), args.consumer_concurrency, args.delay_ms) as stack:
        report = run_soak(
            stack,
            registrations=args.registrations,
            concurrency=args.concurrency,
            failure_rate=args.failure_rate,
        )
    print(format_report(report))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps(
            {**asdict(report), "lost": report.lost, "duplicated": report.duplicated}, indent=2
        )
    )
    return 0 if report.drained and report.lost == 0 and report.duplicated == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
