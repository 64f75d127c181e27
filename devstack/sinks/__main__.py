"""Run a sink in the foreground: `python -m devstack.sinks {smtp,sms} [options]`.

Prints one line, `<kind> sink listening on HOST:PORT ...`, once the port accepts connections (a
parent process waits for it), and stops cleanly with exit status 0 on SIGTERM or SIGINT.

The SMS gateway runs on gevent, so that subcommand monkey-patches before it imports anything
that opens sockets; the SMTP sink runs on asyncio and is never patched.
"""

from __future__ import annotations

import argparse
import signal
import sys

DEFAULT_DELAY_MS = 50.0
DEFAULT_PORTS = {"smtp": 1025, "sms": 1026}
DEFAULT_RECORDS = {"smtp": ".run/sinks/email.jsonl", "sms": ".run/sinks/sms.jsonl"}
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def main(argv: list[str] | None = None) -> int:
    from app.config import load_settings_or_exit

    args = build_parser(load_settings_or_exit().sink_delay_ms).parse_args(argv)
    delay = args.delay if args.delay is not None else args.delay_ms / 1000.0
    if args.kind == "sms":
        return run_sms_gateway(args, delay)
    return run_smtp(args, delay)


def build_parser(default_delay_ms: float = DEFAULT_DELAY_MS) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m devstack.sinks",
        description="Local SMTP server and SMS HTTP gateway that record what they accept.",
    )
    kinds = parser.add_subparsers(dest="kind", required=True)
    smtp = kinds.add_parser("smtp", help="SMTP sink (aiosmtpd)")
    _add_common_options(smtp, "smtp", default_delay_ms)
    smtp.add_argument(
        "--permanent-failure-rate",
        type=_rate,
        default=0.0,
        help="share of messages refused with 550 5.1.1 (default 0)",
    )
    smtp.add_argument(
        "--slow-prefix",
        default="",
        help="recipients whose address starts with this wait --slow-factor times the delay",
    )
    smtp.add_argument(
        "--slow-factor", type=_non_negative, default=1.0, help="(default 1: no slow recipients)"
    )
    sms = kinds.add_parser("sms", help="SMS HTTP gateway sink (gevent pywsgi)")
    _add_common_options(sms, "sms", default_delay_ms)
    sms.add_argument(
        "--timeout-rate",
        type=_rate,
        default=0.0,
        help="share of accepted messages answered only after --hang-seconds (default 0)",
    )
    sms.add_argument(
        "--hang-seconds",
        type=_non_negative,
        default=30.0,
        help="how long a --timeout-rate answer is held back (default 30)",
    )
    return parser


def _add_common_options(
    parser: argparse.ArgumentParser, kind: str, default_delay_ms: float
) -> None:
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument(
        "--port",
        type=int,
        default=DEFAULT_PORTS[kind],
        help=f"port to bind, 0 for any free one (default {DEFAULT_PORTS[kind]})",
    )
    parser.add_argument(
        "--record",
        default=DEFAULT_RECORDS[kind],
        help=f"JSON-lines file accepted messages are appended to (default {DEFAULT_RECORDS[kind]})",
    )
    delay = parser.add_mutually_exclusive_group()
    delay.add_argument("--delay", type=_non_negative, help="seconds to wait per message")
    delay.add_argument(
        "--delay-ms",
        type=_non_negative,
        default=default_delay_ms,
        help="milliseconds to wait per message (default $SINK_DELAY_MS, else 50)",
    )
    parser.add_argument(
        "--failure-rate",
        type=_rate,
        default=0.0,
        help="share of messages refused with a transient error (default 0)",
    )


def _non_negative(raw: str) -> float:
    try:
        value = float(raw)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {raw!r}") from None
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be >= 0: {raw!r}")
    return value


def _rate(raw: str) -> float:
    value = _non_negative(raw)
    if value > 1:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1: {raw!r}")
    return value


def run_smtp(args: argparse.Namespace, delay: float) -> int:
    from devstack.sinks.smtp import SmtpSink

    sink = SmtpSink(
        args.host,
        args.port,
        args.record,
        delay=delay,
        failure_rate=args.failure_rate,
        permanent_failure_rate=args.permanent_failure_rate,
        slow_prefix=args.slow_prefix,
        slow_factor=args.slow_factor,
    )
    # Blocked before the server thread starts, so that thread inherits the mask and the signals
    # are left to sigwait below: no handler can run in the middle of a lock or of start().
    signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        sink.start()
    except OSError as exc:
        print(f"smtp sink cannot listen on {args.host}:{args.port}: {exc}", file=sys.stderr)
        return 1
    _announce("smtp", args.host, sink.port, args.record, delay)
    signal.sigwait(STOP_SIGNALS)
    sink.stop()
    return 0


def run_sms_gateway(args: argparse.Namespace, delay: float) -> int:
    # Patch before anything below imports socket-using modules; nothing above did.
    from gevent import monkey

    monkey.patch_all()

    import gevent
    from gevent.event import Event

    from devstack.sinks.sms_gateway import SmsGatewaySink

    sink = SmsGatewaySink(
        args.host,
        args.port,
        args.record,
        delay=delay,
        failure_rate=args.failure_rate,
        timeout_rate=args.timeout_rate,
        hang_seconds=args.hang_seconds,
    )
    stop_requested = Event()
    # gevent's handlers run as callbacks in the hub, never inside a greenlet's critical section.
    for signum in STOP_SIGNALS:
        gevent.signal_handler(signum, stop_requested.set)
    try:
        sink.start()
    except OSError as exc:
        print(f"sms sink cannot listen on {args.host}:{args.port}: {exc}", file=sys.stderr)
        return 1
    _announce("sms", args.host, sink.port, args.record, delay)
    stop_requested.wait()
    sink.stop()
    return 0


def _announce(kind: str, host: str, port: int, record: str, delay: float) -> None:
    # The parent process (devstack.sinks.process) waits for this exact shape of line.
    print(
        f"{kind} sink listening on {host}:{port} (records {record}, delay {delay * 1000:g} ms)",
        flush=True,
    )


if __name__ == "__main__":
    sys.exit(main())
