"""The email sender pipelines a message's envelope when the server offers PIPELINING (RFC 2920):
MAIL, RCPT and DATA in one write, their replies read after. Against a server of our own that
answers nothing until it has all three, a sender that waits for each reply times out instead.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from app.jobs import EmailJob
from app.senders import PermanentSendError, TransientSendError
from devstack.sinks.smtp import SmtpSink
from services.email import SmtpEmailSender, build_message

JOB = EmailJob(notification_id="n1", to="ada@example.com", subject="Hi", text="Hello\n.hidden\n")
OK = "250 ok"


class ScriptedServer:
    """One SMTP session on a thread: greet, answer EHLO, then read the whole envelope (three
    lines; with `chunking`, the third a BDAT followed by the octets it announces) before
    answering it with `envelope_replies`. If DATA is accepted, read to the lone dot and answer
    `end_reply`. What arrived is kept in `received`."""

    def __init__(
        self,
        *,
        pipelining: bool,
        envelope_replies: tuple[str, str, str],
        end_reply=OK,
        chunking: bool = False,
    ):
        self.extensions = [
            "SIZE 1000000",
            *(["PIPELINING"] if pipelining else []),
            *(["CHUNKING"] if chunking else []),
        ]
        self.envelope_replies = envelope_replies
        self.end_reply = end_reply
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
                self.received.append(lines.readline())  # EHLO
                reply("250-scripted", *(f"250-{e}" for e in self.extensions[:-1]))
                reply(f"250 {self.extensions[-1]}")
                envelope = [lines.readline() for _ in range(3)]
                self.received.extend(envelope)
                if envelope[2].startswith(b"BDAT "):
                    self.received.append(lines.read(int(envelope[2].split()[1])))
                reply(*self.envelope_replies)
                if self.envelope_replies[2].startswith("354"):
                    body = b""
                    while not body.endswith(b"\r\n.\r\n") and body != b".\r\n":
                        body += lines.readline()
                    self.received.append(body)
                    reply(self.end_reply)
                if lines.readline().startswith(b"QUIT"):
                    reply("221 bye")
            except (OSError, ValueError):
                pass  # the client went away: what it sent is in `received`

    def stop(self) -> None:
        self.listener.close()
        self.thread.join(5)


@pytest.fixture
def scripted() -> Iterator[list[ScriptedServer]]:
    servers: list[ScriptedServer] = []
    yield servers
    for server in servers:
        server.stop()


def send_to(servers: list[ScriptedServer], timeout: float = 2.0, **script) -> ScriptedServer:
    server = ScriptedServer(**script)
    servers.append(server)
    sender = SmtpEmailSender("127.0.0.1", server.port, mail_from="me@example.com", timeout=timeout)
    try:
        sender.send(JOB)
    finally:
        sender.close()
    return server


def test_the_envelope_goes_in_one_write_when_the_server_offers_pipelining(scripted):
    server = send_to(scripted, pipelining=True, envelope_replies=(OK, OK, "354 go on"))

    mail, rcpt, data, body = server.received[1:]
    assert mail.startswith(b"MAIL FROM:<me@example.com> SIZE=")
    assert (rcpt, data) == (b"RCPT TO:<ada@example.com>\r\n", b"DATA\r\n")
    # The message as smtplib would send it: a line starting with a dot gets another.
    assert b"\r\n..hidden\r\n" in body and body.endswith(b"\r\n.\r\n")


def test_without_pipelining_each_command_waits_for_its_reply(scripted):
    # This server answers nothing until it has the whole envelope: a client that waits for the
    # MAIL reply first never sends the rest, and its read times out.
    with pytest.raises(TransientSendError, match="timed out"):
        send_to(scripted, 0.5, pipelining=False, envelope_replies=(OK, OK, "354 go on"))


@pytest.mark.parametrize(
    ("replies", "error", "code"),
    [
        ((OK, "550 5.1.1 no such user", "554 no valid recipients"), PermanentSendError, "550"),
        (("451 4.3.0 try later", "503 need MAIL", "503 need RCPT"), TransientSendError, "451"),
        ((OK, OK, "452 4.3.1 out of storage"), TransientSendError, "452"),
    ],
)
def test_a_refusal_is_classified_by_its_code_and_no_message_follows(scripted, replies, error, code):
    with pytest.raises(error, match=code):
        send_to(scripted, pipelining=True, envelope_replies=replies)
    assert len(scripted[0].received) == 4  # EHLO and the envelope, no body


def test_data_accepted_after_a_refused_recipient_gets_an_empty_message(scripted):
    # A server should refuse DATA when no recipient was accepted; one that takes it anyway is
    # sent the lone dot that ends an empty message, never the message.
    with pytest.raises(PermanentSendError, match="550"):
        send_to(
            scripted,
            pipelining=True,
            envelope_replies=(OK, "550 5.1.1 no such user", "354 go on"),
            end_reply="554 no valid recipients",
        )
    assert scripted[0].received[-1] == b".\r\n"


def test_the_sink_offers_pipelining_and_a_dotted_line_arrives_intact(tmp_path: Path):
    sink = SmtpSink("127.0.0.1", 0, tmp_path / "email.jsonl", delay=0)
    sink.start()
    sender = SmtpEmailSender("127.0.0.1", sink.port, mail_from="me@example.com", timeout=2)
    try:
        sender.send(JOB)
        [(session, _returned_at)] = sender._idle
        assert session.has_extn("pipelining")
        sender.send(JOB)  # the session, reused, carries a second message
    finally:
        sender.close()
        sink.stop()
    assert [record["text"] for record in sink.records()] == [JOB.text, JOB.text]


def test_with_chunking_the_message_goes_with_the_envelope_in_one_bdat(scripted, monkeypatch):
    # The message carries its Date to the second: the clock held still, the message rebuilt
    # below is the one sent even when the send and the check straddle a second.
    monkeypatch.setattr(
        "services.email.formatdate", lambda usegmt=False: "Sat, 28 Nov 2026 22:44:15 GMT"
    )
    server = send_to(
        scripted, pipelining=True, chunking=True, envelope_replies=(OK, OK, "250 2.0.0 accepted")
    )

    mail, rcpt, bdat, message = server.received[1:]
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
def test_with_chunking_a_refusal_is_classified_by_its_code(scripted, replies, code):
    with pytest.raises(PermanentSendError, match=code):
        send_to(scripted, pipelining=True, chunking=True, envelope_replies=replies)
