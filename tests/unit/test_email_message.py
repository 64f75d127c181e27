"""The welcome email as it goes on the wire: written without the email package, read back with
it (policy.default, as a mail client would) to the same text, subject and headers."""

from __future__ import annotations

from email import message_from_bytes, policy
from email.message import EmailMessage
from email.utils import parsedate_to_datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from app.jobs import EmailJob
from app.senders import PermanentSendError
from services.email import SmtpEmailSender, build_message

MAIL_FROM = "Offload <no-reply@offload.example>"
TEXT = st.text(st.characters(blacklist_categories=("Cs",)), max_size=400)
SUBJECT = st.text(st.characters(blacklist_categories=("Cs", "Cc", "Zl", "Zp")), max_size=150)


def read_back(raw: bytes) -> EmailMessage:
    message = message_from_bytes(raw.replace(b"\r\n", b"\n"), policy=policy.default)
    assert isinstance(message, EmailMessage)
    return message


def job(*, to: str = "zoe@example.com", subject: str = "Welcome", text: str = "Hi\n") -> EmailJob:
    return EmailJob(notification_id="0a1b2c", to=to, subject=subject, text=text)


def test_headers_name_the_notification_and_the_date():
    message = read_back(build_message(job(), MAIL_FROM))
    assert message["From"] == MAIL_FROM
    assert message["To"] == "zoe@example.com"
    assert message["Message-ID"] == "<0a1b2c@offload.local>"
    assert message["X-Offload-Notification"] == "0a1b2c"
    assert parsedate_to_datetime(message["Date"]).tzinfo is not None
    assert message.get_content_type() == "text/plain"
    assert message.get_content_charset() == "utf-8"


def test_every_line_ends_in_crlf_and_no_bare_lf_is_left():
    raw = build_message(job(text="one\ntwo\r\nthree\rfour"), MAIL_FROM)
    assert b"\n" not in raw.replace(b"\r\n", b"")
    assert b"\r" not in raw.replace(b"\r\n", b"")
    assert read_back(raw).get_content() == "one\ntwo\nthree\nfour"


def test_a_non_ascii_sender_name_is_encoded_and_its_address_kept():
    raw = build_message(job(), "Équipe Offload <no-reply@o.example>")
    assert raw.isascii()
    message = read_back(raw)
    assert message["From"].addresses[0].display_name == "Équipe Offload"
    assert message["From"].addresses[0].addr_spec == "no-reply@o.example"


def test_a_utf8_recipient_goes_raw_for_smtputf8():
    message = read_back(build_message(job(to="josé@example.com"), MAIL_FROM))
    assert message["To"] == "josé@example.com"


@pytest.mark.parametrize("field", ["subject", "to"])
def test_a_line_break_in_a_header_value_is_refused(field):
    with pytest.raises(PermanentSendError):
        build_message(job(**{field: "a\r\nBcc: x@example.com"}), MAIL_FROM)


def test_a_mail_from_that_is_no_address_is_refused_at_start():
    with pytest.raises(ValueError):
        SmtpEmailSender("127.0.0.1", 25, mail_from="Offload <>")


@given(subject=SUBJECT, text=TEXT)
def test_any_subject_and_text_read_back_unchanged_in_short_lines(subject, text):
    raw = build_message(job(subject=subject, text=text), MAIL_FROM)
    head, _, body = raw.partition(b"\r\n\r\n")
    assert raw.isascii()
    assert all(len(line) <= 78 for line in head.split(b"\r\n") if b"Subject" not in line)
    assert all(len(line) <= 76 for line in body.split(b"\r\n"))
    message = read_back(raw)
    assert message["Subject"].strip(" \t") == subject.strip(" \t")
    expected = text.replace("\r\n", "\n").replace("\r", "\n")
    assert message.get_content().rstrip("\n") == expected.rstrip("\n")


@pytest.mark.parametrize(
    "subject", ["Welcome to Offload, =?utf-8?b?SGFja2Vk?=", "Welcome, =?us-ascii?q?Eve?= and ?= =?"]
)
def test_a_subject_that_looks_encoded_reads_back_as_written(subject):
    # The subject carries the user's name: text shaped like an RFC 2047 encoded word would be
    # decoded by the recipient's mail client into other text ("Hacked") unless it is encoded.
    assert read_back(build_message(job(subject=subject), MAIL_FROM))["Subject"] == subject
