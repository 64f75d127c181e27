"""The SMTP sink: an aiosmtpd server that records what it accepts.

Each session's DATA waits `delay` seconds with asyncio.sleep, so slow "remote" servers cost the
sink nothing and many sessions overlap, as they would against a real relay. Failures are injected
at the end of DATA, where a real server would refuse a message: `451 4.3.0` (transient, worth a
retry) at `failure_rate`, `550 5.1.1` (permanent) at `permanent_failure_rate`. Refused messages are
not recorded; the record file holds what the sink accepted.

The server runs on an asyncio loop in a background thread (aiosmtpd's Controller). That works
from a plain test process and from the `python -m devstack.sinks smtp` entry point; it is not
meant for a gevent-patched process.
"""

from __future__ import annotations

import asyncio
import random
import re
import time
from collections.abc import Awaitable
from email import message_from_bytes
from email.header import decode_header, make_header
from email.message import Message
from pathlib import Path

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import MISSING, SMTP, Envelope, Session

from devstack.ports import bind_listener
from devstack.sinks.records import Record, RecordFile, read_records

TRANSIENT_FAILURE_REPLY = "451 4.3.0 sink failure (injected)"
PERMANENT_FAILURE_REPLY = "550 5.1.1 mailbox unavailable (injected)"
ACCEPTED_REPLY = "250 2.0.0 OK: queued"
NOTIFICATION_HEADER = "X-Offload-Notification"
# Announced in the greeting; set explicitly because aiosmtpd's default, getfqdn(), may do DNS.
SERVER_HOSTNAME = "offload-sink.local"


class RecordingSmtpHandler:
    """aiosmtpd handler: delay, maybe refuse, otherwise record and accept.

    `delay`, `failure_rate` and `permanent_failure_rate` are plain attributes, read per message,
    so they may be changed while the sink runs.
    """

    def __init__(
        self,
        records: RecordFile,
        *,
        delay: float = 0.05,
        failure_rate: float = 0.0,
        permanent_failure_rate: float = 0.0,
        slow_prefix: str = "",
        slow_factor: float = 1.0,
        rng: random.Random | None = None,
    ) -> None:
        self.records = records
        self.delay = delay
        # Uneven work for the dispatch benchmark: mail to a recipient whose address starts with
        # `slow_prefix` takes `slow_factor` times the delay.
        self.slow_prefix = slow_prefix
        self.slow_factor = slow_factor
        self.failure_rate = failure_rate
        self.permanent_failure_rate = permanent_failure_rate
        self._rng = rng or random.Random()
        # Message-IDs accepted so far (including by an earlier run on the same record file):
        # a resend of the same message is recorded as a duplicate, as a mailbox would fold it.
        self._seen_message_ids: set[str] = {
            r["message_id"] for r in read_records(records.path) if r.get("message_id")
        }

    async def handle_EHLO(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        hostname: str,
        responses: list[str],
    ) -> list[str]:
        """Offer PIPELINING (RFC 2920), as real mail servers do, and CHUNKING (RFC 3030) when
        the server has BDAT. aiosmtpd keeps what RFC 2920 asks of a server that offers it: it
        answers commands in order, each as soon as it is handled, and refuses DATA without a
        recipient."""
        session.host_name = hostname  # aiosmtpd leaves it to a handler with this hook
        offered = ["250-PIPELINING"]
        if getattr(server, "chunking", False):
            offered.append("250-CHUNKING")
        return [*responses[:-1], *offered, responses[-1]]

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        received_at, started = time.time(), time.monotonic()
        # Parse first and sleep what is left: the reply comes `delay` after the data arrived,
        # the sink's own work included, as from a server that takes that long.
        record = email_record(envelope, received_at)
        delay = self.delay
        if self.slow_prefix and str(record["to"]).startswith(self.slow_prefix):
            delay *= self.slow_factor
        remaining = delay - (time.monotonic() - started)
        if remaining > 0:
            await asyncio.sleep(remaining)
        if self._rng.random() < self.failure_rate:
            return TRANSIENT_FAILURE_REPLY
        if self._rng.random() < self.permanent_failure_rate:
            return PERMANENT_FAILURE_REPLY
        record["duplicate"] = record["message_id"] in self._seen_message_ids
        if record["message_id"]:
            self._seen_message_ids.add(record["message_id"])
        self.records.append(record)
        return ACCEPTED_REPLY


def email_record(envelope: Envelope, received_at: float) -> Record:
    """The record of one accepted message: who it is for, and its subject and plain-text body.

    Parsed with the email package's compat32 policy, its subject decoded on its own: the
    default policy's header objects cost the sink more CPU per message than the consumer
    spends sending it, on the same cores as the stack the bench measures.
    """
    # SMTP lines end in CRLF; the parser would keep the CR in the decoded body text.
    raw = (envelope.original_content or b"").replace(b"\r\n", b"\n")
    message = message_from_bytes(raw)
    return {
        "received_at": received_at,
        "kind": "email",
        "notification_id": _header_text(message.get(NOTIFICATION_HEADER)),
        "to": ", ".join(envelope.rcpt_tos),
        "mail_from": envelope.mail_from,
        "subject": _header_text(message.get("Subject")) or "",
        "text": _plain_text(message),
        "message_id": _header_text(message.get("Message-ID")),
    }


def _header_text(value: str | None) -> str | None:
    """A header's text: folding undone (RFC 5322 2.2.3), RFC 2047 encoded words decoded."""
    if value is None:
        return None
    return str(make_header(decode_header(_FOLD.sub("", value))))


_FOLD = re.compile(r"\r?\n(?=[ \t])")


def _plain_text(message: Message) -> str:
    """The first text/plain part, decoded (transfer encoding, then charset); "" if none."""
    for part in message.walk():
        if part.get_content_type() == "text/plain" and not part.is_multipart():
            payload = part.get_payload(decode=True)
            data = payload if isinstance(payload, bytes) else b""
            return data.decode(part.get_content_charset() or "us-ascii", errors="replace")
    return ""


# An envelope address in its plainest form: `<local@domain>`, both parts dot-atoms of ASCII
# atext (RFC 5321 4.1.2), what nearly every client sends. Anything else (a quoted local part,
# an address literal, comments, UTF-8) goes to aiosmtpd's full parser.
_PLAIN_ANGLE_ADDRESS = re.compile(
    r"<((?:[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+\.)*[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
    r"@(?:[A-Za-z0-9-]+\.)*[A-Za-z0-9-]+)>"
)


class _SinkSmtp(SMTP):
    """aiosmtpd's server, with two things real mail servers have and aiosmtpd lacks.

    - CHUNKING (RFC 3030): BDAT, the message sent as counted octets. A client that pipelines
      sends the envelope and the whole message in one write and gets its answer in one round
      trip; DATA takes two (it waits for 354). Postfix, Exchange and Gmail offer it.
    - Plain envelope addresses read without the email package. aiosmtpd parses every MAIL and
      RCPT address with its RFC 5322 header parser (and defines a typing Protocol class on
      each call): about a quarter of the sink's CPU under load, on the same cores as the stack
      the bench measures. A plain address reads the same either way (a test holds the two
      equal); anything else still takes aiosmtpd's own path.

    Both lean on aiosmtpd's internals (its reader, its handler hook, its envelope reset), as
    pinned in the lock file; the sink's tests exercise each.
    """

    def __init__(self, *args: object, chunking: bool = True, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.chunking = chunking
        # The chunks of the message under way, and the envelope they belong to: RSET, a new
        # EHLO or the end of a message gives the session a new envelope, and drops them.
        self._chunks: list[bytes] = []
        self._chunks_of: Envelope | None = None
        self._chunked_bytes = 0

    async def smtp_BDAT(self, arg: str | None) -> None:
        if not self.chunking:
            await self.push('500 Error: command "BDAT" not recognized')
            return
        size_text, _, last_text = (arg or "").partition(" ")
        if not size_text.isdigit() or last_text.strip().upper() not in ("", "LAST"):
            # The octets that follow cannot be counted, so nothing after them can be read as
            # a command: the session ends.
            await self.push("501 5.5.4 Syntax: BDAT chunk-size [LAST]")
            assert self.transport is not None
            self.transport.close()
            return
        # The octets are read whatever the answer (RFC 3030, 2): a refused chunk leaves the
        # session in step for the next command.
        chunk = await self._read_chunk(int(size_text))
        assert self.envelope is not None
        if self._chunks_of is not self.envelope:
            self._chunks, self._chunks_of, self._chunked_bytes = [], self.envelope, 0
        if await self.check_helo_needed() or await self.check_auth_needed("BDAT"):
            return
        if not self.envelope.rcpt_tos:
            await self.push("503 5.5.1 Error: need RCPT command")
            return
        self._chunked_bytes += int(size_text)
        if self.data_size_limit and self._chunked_bytes > self.data_size_limit:
            self._set_post_data_state()  # type: ignore[no-untyped-call]
            await self.push("552 5.3.4 Error: too much mail data")
            return
        self._chunks.append(chunk)
        if not last_text:
            await self.push(f"250 2.0.0 {size_text} octets received")
            return
        content, self._chunks = b"".join(self._chunks), []
        self.envelope.original_content = self.envelope.content = content
        status = await self._call_handler_hook("DATA")
        self._set_post_data_state()  # type: ignore[no-untyped-call]
        await self.push("250 OK" if status is MISSING else status)

    async def _read_chunk(self, size: int) -> bytes:
        # In pieces, and kept only up to the size limit: a client's stated size alone must not
        # make the sink hold that much.
        kept: list[bytes] = []
        room = self.data_size_limit or size
        while size > 0:
            piece = await self._reader.readexactly(min(size, 65536))
            size -= len(piece)
            if room > 0:
                kept.append(piece[:room])
                room -= len(piece)
        return b"".join(kept)

    async def smtp_DATA(self, arg: str) -> None:
        if self._chunks and self._chunks_of is self.envelope:
            # A message is under way in chunks: DATA may not finish it (RFC 3030, 3).
            await self.push("503 5.5.1 Error: BDAT in progress, end it with BDAT LAST")
            return
        await super().smtp_DATA(arg)

    def _getaddr(self, arg: str) -> tuple[str | None, str | None]:
        plain = _PLAIN_ANGLE_ADDRESS.match(arg)
        if plain is None:
            return super()._getaddr(arg)
        # The parser drops the blanks after the address (and any comment there: left to it).
        rest = arg[plain.end() :].lstrip()
        if rest.startswith("("):
            return super()._getaddr(arg)
        address = plain.group(1)
        if self.local_part_limit and len(address.rpartition("@")[0]) > self.local_part_limit:
            return None, None
        return address, rest


class _BindingController(Controller):
    """A Controller that binds its own socket, so port 0 works and `.port` is the real port.

    aiosmtpd's Controller hands host and port to loop.create_server and later connects to
    `self.port` to check the server is up; with port 0 that check would dial port 0.
    """

    def _create_server(self) -> Awaitable[asyncio.AbstractServer]:
        listener = bind_listener(self.hostname, self.port)
        self.port = listener.getsockname()[1]
        return self.loop.create_server(self._factory_invoker, sock=listener, ssl=self.ssl_context)

    def __init__(self, *args: object, chunking: bool = True, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.chunking = chunking

    def factory(self) -> SMTP:
        return _SinkSmtp(self.handler, chunking=self.chunking, **self.SMTP_kwargs)


class SmtpSink:
    """The SMTP sink with start()/stop(); also a context manager.

    `delay`, `failure_rate` and `permanent_failure_rate` can be changed while it runs.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        record_path: str | Path = "email.jsonl",
        *,
        delay: float = 0.05,
        failure_rate: float = 0.0,
        permanent_failure_rate: float = 0.0,
        smtputf8: bool = True,
        chunking: bool = True,
        slow_prefix: str = "",
        slow_factor: float = 1.0,
    ) -> None:
        self.host = host
        # Offer SMTPUTF8 (RFC 6531), as most mail servers do; off, to test a server without it.
        self.smtputf8 = smtputf8
        # Offer CHUNKING (RFC 3030); off, to test a client against a server with DATA only.
        self.chunking = chunking
        self.port = port
        self.record_path = Path(record_path)
        self._records = RecordFile(self.record_path)
        self.handler = RecordingSmtpHandler(
            self._records,
            delay=delay,
            failure_rate=failure_rate,
            permanent_failure_rate=permanent_failure_rate,
            slow_prefix=slow_prefix,
            slow_factor=slow_factor,
        )
        self._controller: _BindingController | None = None

    @property
    def delay(self) -> float:
        return self.handler.delay

    @delay.setter
    def delay(self, seconds: float) -> None:
        self.handler.delay = seconds

    @property
    def failure_rate(self) -> float:
        return self.handler.failure_rate

    @failure_rate.setter
    def failure_rate(self, rate: float) -> None:
        self.handler.failure_rate = rate

    @property
    def permanent_failure_rate(self) -> float:
        return self.handler.permanent_failure_rate

    @permanent_failure_rate.setter
    def permanent_failure_rate(self, rate: float) -> None:
        self.handler.permanent_failure_rate = rate

    def start(self) -> None:
        """Listen on host:port (port 0 picks a free one, then `.port` says which)."""
        if self._controller is not None:
            raise RuntimeError("SMTP sink already running")
        controller = _BindingController(
            self.handler,
            hostname=self.host,
            port=self.port,
            server_hostname=SERVER_HOSTNAME,
            ready_timeout=10.0,
            enable_SMTPUTF8=self.smtputf8,
            chunking=self.chunking,
        )
        controller.start()
        self._controller = controller
        self.port = controller.port

    def stop(self) -> None:
        """Close the listener and cancel sessions still in DATA; safe to call twice."""
        if self._controller is not None:
            self._controller.stop()
            self._controller = None
        self._records.close()

    def records(self) -> list[Record]:
        return read_records(self.record_path)

    def __enter__(self) -> SmtpSink:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
