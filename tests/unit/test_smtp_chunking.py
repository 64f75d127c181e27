"""CHUNKING (RFC 3030): when the server offers it beside PIPELINING, the email sender sends a
message's envelope, `BDAT <size> LAST` and the message itself in one write and reads the three
replies after: one round trip where DATA needs two. The SMTP sink offers it, as Postfix,
Exchange and Gmail do, and keeps what the RFC asks of a server."""

from __future__ import annotations

import smtplib
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from app.jobs import EmailJob
from app.senders import PermanentSendError
from devstack.sinks.smtp import SmtpSink
from services.email import SmtpEmailSender, build_message

JOB = EmailJob(notification_id="n1", to="ada@example.com", subject="Hi", text="Hello\n.hidden\n")
OK = "250 ok"


class ChunkingServer:
    """One SMTP session on a thread that offers PIPELINING and CHUNKING, reads the envelope and
    the BDAT chunk it announces, then answers all three with `replies`."""

    def __init__(self, replies: tuple[str, str, str]) -> None:
        self.replies = replies
        self.received: list[bytes] = []
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        connection, _ = self.listener.accept()
        connection.settimeout(5)
        with connection, connection.makefile("rb") as lines:

            def reply(*texts: str) -> None:
                connection.sendall("".join(f"{text}\r\n" for text in texts).encode())

            try:
                reply("220 scripted")
                lines.readline()  # EHLO
                reply("250-scripted", "250-PIPELINING", "250-SIZE 1000000", "250 CHUNKING")
                mail, rcpt, bdat = (lines.readline() for _ in range(3))
                size = int(bdat.split()[1])
                self.received += [mail, rcpt, bdat, lines.read(size)]
                reply(*self.replies)
                if lines.readline().startswith(b"QUIT"):
                    reply("221 bye")
            except (OSError, ValueError):
                pass

    def stop(self) -> None:
        self.listener.close()
        self.thread.join(5)


@pytest.fixture
def servers() -> Iterator[list[ChunkingServer]]:
    started: list[ChunkingServer] = []
    yield started
    for server in started:
        server.stop()


def send_to(servers: list[ChunkingServer], replies: tuple[str, str, str]) -> ChunkingServer:
    server = ChunkingServer(replies)
    servers.append(server)
    sender = SmtpEmailSender("127.0.0.1", server.port, mail_from="me@example.com", timeout=2)
    try:
        sender.send(JOB)
    finally:
        sender.close()
    return server


def test_the_envelope_and_the_message_go_in_one_bdat_without_dot_stuffing(servers):
    server = send_to(servers, (OK, OK, "250 2.0.0 message accepted"))

    mail, rcpt, bdat, message = server.received
    assert mail.startswith(b"MAIL FROM:<me@example.com> SIZE=")
    assert rcpt == b"RCPT TO:<ada@example.com>\r\n"
    assert bdat == b"BDAT %d LAST\r\n" % len(message)
    # BDAT counts octets: a line starting with a dot goes as it is, and no lone dot ends it.
    assert b"\r\n.hidden\r\n" in message and not message.endswith(b"\r\n.\r\n")
    assert message == build_message(JOB, "me@example.com")


@pytest.mark.parametrize(
    ("replies", "code"),
    [
        ((OK, "550 5.1.1 no such user", "554 5.5.1 no valid recipients"), "550"),
        ((OK, OK, "552 5.3.4 message too big"), "552"),
    ],
)
def test_a_refusal_is_classified_by_its_code(servers, replies, code):
    with pytest.raises(PermanentSendError, match=code):
        send_to(servers, replies)


@pytest.fixture
def sink(tmp_path: Path) -> Iterator[SmtpSink]:
    started = SmtpSink("127.0.0.1", 0, tmp_path / "email.jsonl", delay=0)
    started.start()
    yield started
    started.stop()


def session(sink: SmtpSink) -> smtplib.SMTP:
    client = smtplib.SMTP("127.0.0.1", sink.port, timeout=5)
    client.ehlo()
    assert client.has_extn("chunking") and client.has_extn("pipelining")
    return client


def test_the_sink_records_a_bdat_message_as_it_records_data(tmp_path: Path):
    recorded = {}
    for chunking in (True, False):
        sink = SmtpSink("127.0.0.1", 0, tmp_path / f"{chunking}.jsonl", delay=0, chunking=chunking)
        sink.start()
        sender = SmtpEmailSender("127.0.0.1", sink.port, mail_from="me@example.com", timeout=2)
        try:
            sender.send(JOB)
            [(smtp, _returned_at)] = sender._idle
            assert smtp.has_extn("chunking") is chunking
        finally:
            sender.close()
            sink.stop()
        [record] = sink.records()
        del record["received_at"]
        recorded[chunking] = record
    assert recorded[True] == recorded[False]
    assert recorded[True]["text"] == JOB.text


def test_a_message_in_several_chunks_is_one_message(sink: SmtpSink):
    message = b"Subject: in parts\r\n\r\nfirst half, second half\r\n"
    with session(sink) as client:
        client.mail("me@example.com")
        client.rcpt("ada@example.com")
        client.send(b"BDAT 10\r\n" + message[:10])
        assert client.getreply() == (250, b"2.0.0 10 octets received")
        rest = message[10:]
        client.send(b"BDAT %d LAST\r\n" % len(rest) + rest)
        assert client.getreply()[0] == 250
    [record] = sink.records()
    assert (record["subject"], record["text"]) == ("in parts", "first half, second half\n")


def test_a_chunk_without_a_recipient_is_read_and_refused_and_the_session_goes_on(sink: SmtpSink):
    with session(sink) as client:
        client.mail("me@example.com")
        client.send(b"BDAT 12 LAST\r\nNOOP\r\nNOOP\r\n")  # octets that look like commands
        assert client.getreply()[0] == 503
        assert client.noop()[0] == 250
    assert sink.records() == []


def test_data_cannot_finish_a_message_begun_in_chunks(sink: SmtpSink):
    with session(sink) as client:
        client.mail("me@example.com")
        client.rcpt("ada@example.com")
        client.send(b"BDAT 4\r\nabcd")
        assert client.getreply()[0] == 250
        assert client.docmd("DATA")[0] == 503
        client.send(b"BDAT 0 LAST\r\n")
        assert client.getreply()[0] == 250
    assert len(sink.records()) == 1


def test_a_bdat_whose_size_cannot_be_read_ends_the_session(sink: SmtpSink):
    with session(sink) as client:
        client.mail("me@example.com")
        client.rcpt("ada@example.com")
        assert client.docmd("BDAT", "lots LAST")[0] == 501
        with pytest.raises(smtplib.SMTPServerDisconnected):
            client.noop()


def test_a_sink_without_chunking_does_not_know_bdat(tmp_path: Path):
    sink = SmtpSink("127.0.0.1", 0, tmp_path / "email.jsonl", delay=0, chunking=False)
    sink.start()
    try:
        with smtplib.SMTP("127.0.0.1", sink.port, timeout=5) as client:
            client.ehlo()
            assert not client.has_extn("chunking")
            assert client.docmd("BDAT", "0 LAST")[0] == 500
    finally:
        sink.stop()
