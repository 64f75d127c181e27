"""The real senders against the local sinks, over real sockets on 127.0.0.1.

The SMTP sink runs in this process (asyncio in a thread); the SMS gateway needs gevent, so it runs
as a child process, the way the benchmark and the dev stack start it. Sinks answer at once
(delay 0) unless a test says otherwise.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from app.jobs import EmailJob, SmsJob
from app.senders import PermanentSendError, TransientSendError
from devstack.ports import free_port
from devstack.sinks.process import SinkProcess, start_sink_process
from devstack.sinks.records import RecordFile, read_records
from devstack.sinks.smtp import SmtpSink
from services.email import SmtpEmailSender
from services.sms import HttpSmsSender

WELCOME = EmailJob(
    notification_id="0b9e6c1e-5f0c-4d4e-9a55-2f6f1f0c1a01",
    to="ada@example.com",
    subject="Welcome to Offload, Ada",
    text="Hi Ada,\n\nthanks for registering. Ünïcode survives.\n",
)
VERIFY = SmsJob(
    notification_id="5c3c0d6a-1c2b-4f7e-8f43-9d5b1e7a2b02",
    to="+14155550123",
    body="Your Offload code is 482913",
)


def email_sender(port: int) -> SmtpEmailSender:
    return SmtpEmailSender("127.0.0.1", port, mail_from="offload@example.com", timeout=2.0)


StartGateway = Callable[..., SinkProcess]


@pytest.fixture
def start_gateway(tmp_path: Path) -> Iterator[StartGateway]:
    started: list[SinkProcess] = []

    def start(**options: Any) -> SinkProcess:
        options.setdefault("delay_ms", 0)
        gateway = start_sink_process("sms", 0, tmp_path / f"sms-{len(started)}.jsonl", **options)
        started.append(gateway)
        return gateway

    yield start
    for gateway in started:
        assert gateway.stop() == 0, gateway.stderr_text()


# --- email -------------------------------------------------------------------------------------


def test_sent_email_is_recorded_with_its_notification_id(smtp_sink: SmtpSink) -> None:
    email_sender(smtp_sink.port).send(WELCOME)

    [record] = smtp_sink.records()
    assert record["kind"] == "email"
    assert record["notification_id"] == WELCOME.notification_id
    assert record["to"] == WELCOME.to
    assert record["mail_from"] == "offload@example.com"
    assert record["subject"] == WELCOME.subject
    assert record["text"] == WELCOME.text
    assert isinstance(record["received_at"], float)


def test_injected_smtp_failure_is_transient_and_not_recorded(smtp_sink: SmtpSink) -> None:
    smtp_sink.failure_rate = 1.0

    with pytest.raises(TransientSendError, match="451"):
        email_sender(smtp_sink.port).send(WELCOME)
    assert smtp_sink.records() == []


def test_smtp_5xx_refusal_is_permanent(smtp_sink: SmtpSink) -> None:
    smtp_sink.permanent_failure_rate = 1.0

    with pytest.raises(PermanentSendError, match="550"):
        email_sender(smtp_sink.port).send(WELCOME)
    assert smtp_sink.records() == []


def test_email_to_a_port_nobody_listens_on_is_transient() -> None:
    with pytest.raises(TransientSendError, match="connection failed"):
        email_sender(free_port()).send(WELCOME)


def test_smtp_sink_can_be_restarted_on_the_same_record_file(tmp_path: Path) -> None:
    record_path = tmp_path / "email.jsonl"
    for _ in range(2):
        with SmtpSink("127.0.0.1", 0, record_path, delay=0) as sink:
            email_sender(sink.port).send(WELCOME)

    assert len(read_records(record_path)) == 2


# --- SMS ---------------------------------------------------------------------------------------


def test_sent_sms_is_recorded_with_its_idempotency_key(start_gateway: StartGateway) -> None:
    gateway = start_gateway()

    HttpSmsSender(gateway.messages_url, timeout=2.0).send(VERIFY)

    [record] = gateway.records()
    assert record["kind"] == "sms"
    assert record["notification_id"] == VERIFY.notification_id
    assert record["to"] == VERIFY.to
    assert record["body"] == VERIFY.body
    assert record["duplicate"] is False
    assert record["id"]


def test_resent_sms_is_accepted_once_and_recorded_as_duplicate(
    start_gateway: StartGateway,
) -> None:
    gateway = start_gateway()
    sender = HttpSmsSender(gateway.messages_url, timeout=2.0)

    sender.send(VERIFY)
    sender.send(VERIFY)  # what a consumer does when RabbitMQ redelivers

    first, second = gateway.records()
    assert (first["duplicate"], second["duplicate"]) == (False, True)
    assert second["id"] == first["id"]
    assert requests.get(gateway.messages_url, timeout=2).json() == [first, second]


def test_gateway_503_is_transient_and_not_recorded(start_gateway: StartGateway) -> None:
    gateway = start_gateway(failure_rate=1.0)

    with pytest.raises(TransientSendError, match="503"):
        HttpSmsSender(gateway.messages_url, timeout=2.0).send(VERIFY)
    assert gateway.records() == []


def test_gateway_rejects_a_message_without_recipient(start_gateway: StartGateway) -> None:
    gateway = start_gateway()

    response = requests.post(
        gateway.messages_url,
        json={"body": "no recipient", "idempotency_key": "k-1"},
        timeout=2,
    )

    assert response.status_code == 400
    assert "'to'" in response.json()["error"]
    assert gateway.records() == []


def test_gateway_that_does_not_answer_in_time_is_transient(start_gateway: StartGateway) -> None:
    gateway = start_gateway(timeout_rate=1.0, hang_seconds=1.0)

    with pytest.raises(TransientSendError, match="unreachable"):
        HttpSmsSender(gateway.messages_url, timeout=0.3).send(VERIFY)
    # The gateway took the message before it stalled: the case the idempotency key is for.
    [record] = gateway.records()
    assert record["notification_id"] == VERIFY.notification_id


def test_gateway_4xx_is_permanent(start_gateway: StartGateway) -> None:
    gateway = start_gateway()
    wrong_url = f"http://127.0.0.1:{gateway.port}/no-such-endpoint"

    with pytest.raises(PermanentSendError, match="404"):
        HttpSmsSender(wrong_url, timeout=2.0).send(VERIFY)


# --- record file -------------------------------------------------------------------------------


def test_read_records_leaves_out_a_half_written_last_line(tmp_path: Path) -> None:
    path = tmp_path / "records.jsonl"
    records = RecordFile(path)
    records.append({"kind": "sms", "to": "+14155550123"})
    records.close()
    with path.open("ab") as file:
        # Cut inside the two bytes of "Ü", as a reader racing the writer might see it.
        file.write('{"kind": "sms", "body": "Ü'.encode()[:-1])

    assert read_records(path) == [{"kind": "sms", "to": "+14155550123"}]
    assert read_records(tmp_path / "missing.jsonl") == []


def test_smtp_errors_never_carry_the_recipient_address():
    from app.jobs import EmailJob
    from services.email import _masked

    job = EmailJob(notification_id="n", to="ann.lee@example.com", subject="s", text="t")
    masked = _masked(job, "SMTP 550: b'<ann.lee@example.com>: Recipient address rejected'")
    assert "ann.lee@example.com" not in masked and "a***@example.com" in masked


def test_smtp_sessions_are_reused_and_a_dead_one_is_a_transient_failure(tmp_path):
    from app.jobs import EmailJob
    from app.senders import TransientSendError
    from devstack.sinks.smtp import SmtpSink
    from services.email import SmtpEmailSender

    sink = SmtpSink(port=0, record_path=tmp_path / "mail.jsonl", delay=0)
    sink.start()
    sender = SmtpEmailSender("127.0.0.1", sink.port, mail_from="a@example.com", timeout=2)
    jobs = [
        EmailJob(notification_id=f"n{i}", to=f"u{i}@example.com", subject="s", text="t")
        for i in range(3)
    ]
    sender.send(jobs[0])
    first_session = sender._idle[-1][0]
    sender.send(jobs[1])
    assert sender._idle[-1][0] is first_session  # one session carried both messages
    sink.stop()
    sink = SmtpSink(port=sink.port, record_path=tmp_path / "mail.jsonl", delay=0)
    sink.start()
    try:
        # The pooled session died with the old server: that send fails, transiently (it was not
        # accepted), and the next one opens a fresh session.
        try:
            sender.send(jobs[2])
        except TransientSendError:
            sender.send(jobs[2])
        assert [r["notification_id"] for r in sink.records()] == ["n0", "n1", "n2"]
    finally:
        sender.close()
        sink.stop()


def test_non_ascii_text_and_sender_name_arrive_intact(tmp_path):
    from app.jobs import EmailJob
    from devstack.sinks.smtp import SmtpSink
    from services.email import SmtpEmailSender

    sink = SmtpSink(port=0, record_path=tmp_path / "mail.jsonl", delay=0)
    sink.start()
    try:
        sender = SmtpEmailSender(
            "127.0.0.1", sink.port, mail_from="Équipe Offload <no-reply@o.example>"
        )
        text = "Bonjour Zoë,\n\nline with a dot:\n.\nend ✓\n"
        sender.send(
            EmailJob(notification_id="u1", to="zoe@example.com", subject="Café ✓", text=text)
        )
        sender.close()
        [record] = sink.records()
    finally:
        sink.stop()
    assert record["text"] == text
    assert record["subject"] == "Café ✓"
    assert record["mail_from"] == "no-reply@o.example"


@pytest.mark.parametrize(
    "subject",
    ["Welcome", "Café ✓ " * 12, "word " * 40],
)
def test_the_sink_reads_a_message_as_the_email_package_does(subject):
    """The sink parses with compat32 for speed; what it records must be what the default
    policy reads: the subject unfolded and decoded, the plain part decoded."""
    from email import message_from_bytes, policy
    from email.message import EmailMessage

    from devstack.sinks.smtp import email_record
    from services.email import build_message

    text = "Bonjour Zoë,\n\n=3D not an escape, a trailing space \n" + "long line " * 30 + "\n"
    raw = build_message(
        EmailJob(notification_id="n1", to="zoe@example.com", subject=subject, text=text),
        "Équipe Offload <no-reply@o.example>",
    )
    envelope = type(
        "Envelope",
        (),
        {"original_content": raw, "rcpt_tos": ["zoe@example.com"], "mail_from": "a@o.example"},
    )
    record = email_record(envelope, 0.0)
    expected = message_from_bytes(raw.replace(b"\r\n", b"\n"), policy=policy.default)
    assert isinstance(expected, EmailMessage)
    assert record["subject"] == str(expected["Subject"]) == subject
    assert record["text"] == text
    assert record["message_id"] == str(expected["Message-ID"])
    assert record["notification_id"] == "n1"


def test_the_sink_finds_the_plain_part_of_a_multipart_message():
    from email.message import EmailMessage

    from devstack.sinks.smtp import email_record

    message = EmailMessage()
    message["Subject"] = "Two parts"
    message.set_content("plain ✓\n")
    message.add_alternative("<p>html</p>\n", subtype="html")
    envelope = type(
        "Envelope",
        (),
        {"original_content": message.as_bytes(), "rcpt_tos": ["a@b.example"], "mail_from": ""},
    )
    record = email_record(envelope, 0.0)
    assert (record["subject"], record["text"]) == ("Two parts", "plain ✓\n")
