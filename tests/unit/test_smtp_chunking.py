"""CHUNKING (RFC 3030) in the SMTP sink: it offers BDAT, as Postfix, Exchange and Gmail do, and
keeps what the RFC asks of a server. (The sender's side, one write for the envelope and the
message, is in test_smtp_pipelining.py.)"""

from __future__ import annotations

import smtplib
from pathlib import Path

import pytest

from app.jobs import EmailJob
from devstack.sinks.records import RecordFile, read_records
from devstack.sinks.smtp import RecordingSmtpHandler, SmtpSink, _BindingController
from services.email import SmtpEmailSender

JOB = EmailJob(notification_id="n1", to="ada@example.com", subject="Hi", text="Hello\n.hidden\n")


def session(smtp_sink: SmtpSink) -> smtplib.SMTP:
    client = smtplib.SMTP("127.0.0.1", smtp_sink.port, timeout=5)
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


def test_a_message_in_several_chunks_is_one_message(smtp_sink: SmtpSink):
    message = b"Subject: in parts\r\n\r\nfirst half, second half\r\n"
    with session(smtp_sink) as client:
        client.mail("me@example.com")
        client.rcpt("ada@example.com")
        client.send(b"BDAT 10\r\n" + message[:10])
        assert client.getreply() == (250, b"2.0.0 10 octets received")
        rest = message[10:]
        client.send(b"BDAT %d LAST\r\n" % len(rest) + rest)
        assert client.getreply()[0] == 250
    [record] = smtp_sink.records()
    assert (record["subject"], record["text"]) == ("in parts", "first half, second half\n")


def test_a_chunk_without_a_recipient_is_read_refused_and_the_session_goes_on(smtp_sink: SmtpSink):
    with session(smtp_sink) as client:
        client.mail("me@example.com")
        client.send(b"BDAT 12 LAST\r\nNOOP\r\nNOOP\r\n")  # octets that look like commands
        assert client.getreply()[0] == 503
        assert client.noop()[0] == 250
    assert smtp_sink.records() == []


def test_data_cannot_finish_a_message_begun_in_chunks(smtp_sink: SmtpSink):
    with session(smtp_sink) as client:
        client.mail("me@example.com")
        client.rcpt("ada@example.com")
        client.send(b"BDAT 4\r\nabcd")
        assert client.getreply()[0] == 250
        assert client.docmd("DATA")[0] == 503
        client.send(b"BDAT 0 LAST\r\n")
        assert client.getreply()[0] == 250
    assert len(smtp_sink.records()) == 1


def test_a_bdat_whose_size_cannot_be_read_ends_the_session(smtp_sink: SmtpSink):
    with session(smtp_sink) as client:
        client.mail("me@example.com")
        client.rcpt("ada@example.com")
        assert client.docmd("BDAT", "lots LAST")[0] == 501
        # The server hung up: the next command finds the connection gone, whichever way the
        # socket reports it.
        with pytest.raises((smtplib.SMTPServerDisconnected, ConnectionError)):
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


def test_chunks_over_the_size_limit_are_read_refused_and_not_kept(tmp_path: Path):
    records = RecordFile(tmp_path / "email.jsonl")
    controller = _BindingController(
        RecordingSmtpHandler(records, delay=0), hostname="127.0.0.1", port=0, data_size_limit=100
    )
    controller.start()
    try:
        with smtplib.SMTP("127.0.0.1", controller.port, timeout=5) as client:
            client.ehlo()
            client.mail("me@example.com")
            client.rcpt("ada@example.com")
            client.send(b"BDAT 60\r\n" + b"x" * 60)
            assert client.getreply()[0] == 250
            client.send(b"BDAT 60 LAST\r\n" + b"y" * 60)  # 120 octets in all: over the limit
            assert client.getreply()[0] == 552
            assert client.noop()[0] == 250  # every octet was read: the session is in step
    finally:
        controller.stop()
        records.close()
    assert read_records(records.path) == []
