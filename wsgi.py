"""The WSGI entry point.

`gunicorn -k gevent wsgi:app` imports `app` from here (gunicorn's gevent worker patches first).
Run as a script, it serves with gevent's WSGIServer: a bounded pool of greenlets, TCP_NODELAY on
the listening socket, and a SIGTERM that stops accepting and drains in-flight requests.
"""

from gevent import monkey

# Patch before anything imports socket, ssl, threading or time: pika, smtplib and requests
# must see gevent's cooperative versions.
monkey.patch_all()

import argparse  # noqa: E402
import logging  # noqa: E402
import socket  # noqa: E402
import sys  # noqa: E402

import gevent  # noqa: E402
from gevent.pool import Pool  # noqa: E402
from gevent.pywsgi import WSGIHandler, WSGIServer  # noqa: E402

from app import create_app  # noqa: E402
from app.config import load_settings_or_exit  # noqa: E402
from app.db import checkpoint_off_the_loop  # noqa: E402
from app.extension import offload  # noqa: E402
from app.hubwatch import freeze_startup_heap, watch_hub  # noqa: E402
from app.shutdown import on_stop_signals  # noqa: E402

log = logging.getLogger("offload.web")

DRAIN_SECONDS = 10.0


def __getattr__(name: str) -> object:
    # `app` is built on first access, not at import, so importing wsgi never reads the
    # environment or opens anything (gunicorn accesses it in each worker, after the fork).
    if name == "app":
        application = create_app()
        globals()["app"] = application
        return application
    raise AttributeError(name)


def listening_socket(host: str, port: int, *, nodelay: bool) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if nodelay:
        # gevent's handler writes the headers and the body in separate small sends; with Nagle
        # on, the second waits for the client's delayed ACK (~40 ms per keep-alive request).
        # Accepted sockets inherit the option from the listener on Linux.
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.bind((host, port))
    sock.listen(1024)
    sock.setblocking(False)
    return sock


class QuietHandler(WSGIHandler):
    """No access line per request: metrics and structured logs cover it, at far less cost."""

    def log_request(self) -> None:
        pass


class SlowClient(ValueError):
    """A client too slow with its headers: gevent answers a ValueError here with 400, closed."""


def bounded_handler(
    base: type[WSGIHandler], *, header_timeout: float, idle_timeout: float
) -> type[WSGIHandler]:
    """`base` with the timeouts gevent's handler lacks.

    Without them each connection holds a greenlet of the bounded pool for as long as the client
    likes, so WEB_POOL_SIZE idle (or trickling) connections stop the server accepting. Now an
    idle connection is closed after `idle_timeout` (before a request, and in any one read or
    write), and a request's line and headers must arrive within `header_timeout`.
    """

    class Bounded(base):  # type: ignore[valid-type,misc]
        def handle(self) -> None:
            self.socket.settimeout(idle_timeout)
            super().handle()

        def read_requestline(self) -> str:
            with gevent.Timeout(idle_timeout, False):
                line: str = super().read_requestline()
                return line
            return ""  # idle too long: close

        def read_request(self, raw_requestline: str) -> object:
            with gevent.Timeout(header_timeout, SlowClient("request headers too slow")):
                return super().read_request(raw_requestline)

    return Bounded


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Serve Offload with gevent's WSGIServer.")
    parser.add_argument("--host", help="overrides HOST")
    parser.add_argument("--port", type=int, help="overrides PORT")
    parser.add_argument(
        "--no-nodelay",
        action="store_true",
        help="leave Nagle's algorithm on (to show the delayed-ACK stall; never in production)",
    )
    parser.add_argument("--access-log", action="store_true", help="log a line per request")
    args = parser.parse_args(argv)

    settings = load_settings_or_exit()
    overrides: dict[str, object] = {}
    if args.host:
        overrides["host"] = args.host
    if args.port is not None:
        overrides["port"] = args.port
    if args.no_nodelay:
        overrides["tcp_nodelay"] = False
    settings = settings.with_overrides(**overrides) if overrides else settings

    application = create_app(settings)
    sock = listening_socket(settings.host, settings.port, nodelay=settings.tcp_nodelay)
    server = WSGIServer(
        sock,
        application,
        spawn=Pool(settings.web_pool_size),
        handler_class=bounded_handler(
            WSGIHandler if args.access_log else QuietHandler,
            header_timeout=settings.web_header_timeout,
            idle_timeout=settings.web_idle_timeout,
        ),
        log=None if not args.access_log else "default",
    )

    def drain() -> None:
        log.info("stop signal: draining requests for up to %.0fs", DRAIN_SECONDS)
        gevent.spawn(server.stop, timeout=DRAIN_SECONDS)

    on_stop_signals(drain, left_behind="requests in flight are cut off")
    watch_hub(settings.hub_block_report_ms)
    checkpoint_off_the_loop(offload(application).engine)
    freeze_startup_heap()
    server.start()
    offload(application).require_dispatcher().publisher.warm_up()
    address = server.address
    log.info(
        "serving on http://%s:%s (tcp_nodelay=%s)", address[0], address[1], settings.tcp_nodelay
    )
    print(f"offload web listening on http://{address[0]}:{address[1]}", flush=True)
    server.serve_forever(stop_timeout=DRAIN_SECONDS)
    dispatcher = offload(application).require_dispatcher()
    dispatcher.queued_marker.close()
    dispatcher.publisher.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
