"""The burst (peak shaving): a spike of queued registrations far above the consumers' send rate.

The web server accepts the spike as fast as it can write rows and publish; the queue holds what
the consumers cannot send yet; they drain it at their steady rate (concurrency / sink delay per
channel). The timeline comes from three clocks that share the machine's wall time: the load
generator's response times, the bench's queue-depth samples and the sinks' `received_at`.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from bench.sinkwatch import wait_for_all
from bench.stats import finite_or_none, summarize

if TYPE_CHECKING:
    from bench.runner import BenchSession

TAIL_SECONDS = 1.0  # queue-depth samples kept after the drain, so the chart shows it at zero


def run_burst(session: BenchSession, requests: int, concurrency: int) -> dict[str, Any]:
    session.wait_idle()
    session.progress(
        f"burst: {requests} queued registrations at concurrency {concurrency} "
        f"(consumers send at most ~{session.consumer_concurrency / (session.delay_ms / 1000):.0f}"
        f"/s per channel)"
    )
    began = time.time()
    relayed_before = session.relayed_count()
    result = session.load(
        session.spec("queued", concurrency, warmup=0.0, duration=0.0, requests=requests)
    )
    accepted = [i for i, status in enumerate(result.status) if status == 201]
    expected = session.expected_recipients(result, accepted)
    missing = wait_for_all(session.tails, expected, timeout=session.delivery_timeout(len(accepted)))
    session.wait_recorded()
    relayed = session.relayed_count() - relayed_before
    drained = time.time()
    time.sleep(TAIL_SECONDS)
    depth = session.poller.snapshot().between(began - 0.2, time.time())

    accepted_at = sorted(result.start[i] + result.latency_ms[i] / 1000 - began for i in accepted)
    delivered_at = {
        channel: sorted(
            session.tails[channel].received_at[to] - began
            for to in expected[channel]
            if to in session.tails[channel].received_at
        )
        for channel in ("email", "sms")
    }
    last_accept = accepted_at[-1] if accepted_at else 0.0
    latency = summarize([result.latency_ms[i] for i in accepted])
    channels: dict[str, Any] = {}
    for channel, times in delivered_at.items():
        span = times[-1] - times[0] if len(times) > 1 else 0.0
        channels[channel] = {
            "delivered": len(times),
            "missing": missing.get(channel, 0),
            "first_s": round(times[0], 3) if times else None,
            "last_s": round(times[-1], 3) if times else None,
            "rate_per_s": finite_or_none((len(times) - 1) / span) if span > 0 else None,
            "drained_after_last_accept_s": round(times[-1] - last_accept, 3) if times else None,
            "queue_depth_peak": max(depth.depth[channel], default=0),
        }
    summary = {
        "requests": requests,
        "concurrency": concurrency,
        "consumer_concurrency": session.consumer_concurrency,
        "sink_delay_ms": session.delay_ms,
        "accepted": len(accepted),
        # jobs the outbox relay published: their publish or its confirm failed
        "left_to_relay": relayed,
        "errors": len(result.status) - len(accepted),
        "error_kinds": result.error_kinds,
        "accept_seconds": round(last_accept, 3),
        "accept_rate_per_s": finite_or_none(len(accepted) / last_accept) if last_accept else None,
        "latency_ms": {k: finite_or_none(latency[k]) for k in ("p50", "p95", "p99", "max")},
        "drain_seconds": round(drained - began, 3),
        "channels": channels,
        "timeline": {
            "accepted_s": [round(t, 3) for t in accepted_at],
            "email_s": [round(t, 3) for t in delivered_at["email"]],
            "sms_s": [round(t, 3) for t in delivered_at["sms"]],
            "depth_s": [round(t - began, 2) for t in depth.t],
            "depth_email": depth.depth["email"],
            "depth_sms": depth.depth["sms"],
        },
    }
    rates = ", ".join(
        f"{c} {v['rate_per_s'] or 0:.0f}/s (peak queue {v['queue_depth_peak']})"
        for c, v in channels.items()
    )
    session.progress(
        f"burst: {len(accepted)} accepted in {last_accept:.1f}s "
        f"({summary['accept_rate_per_s'] or 0:.0f} req/s); delivered {rates}; "
        f"all out {max((v['last_s'] or 0) for v in channels.values()):.1f}s after the start"
    )
    return summary
