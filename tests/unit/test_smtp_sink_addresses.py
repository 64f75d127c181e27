"""The SMTP sink reads plain envelope addresses itself, and every other form with aiosmtpd's own
parser: the two must agree on whatever a client may send after MAIL FROM: or RCPT TO:."""

from __future__ import annotations

import smtplib
from pathlib import Path

from aiosmtpd.smtp import SMTP
from hypothesis import example, given
from hypothesis import strategies as st

from devstack.sinks.smtp import SmtpSink, _SinkSmtp

ATEXT = "abcXYZ019!#$%&'*+/=?^_`{|}~-"
atoms = st.text(alphabet=ATEXT, min_size=1, max_size=6)
# Plain addresses, and the near misses the quick path must leave to the parser.
local_parts = st.one_of(
    st.lists(atoms, min_size=1, max_size=3).map(".".join),
    st.sampled_from(['"quoted part"', "a..b", ".a", "a.", "é", "a(comment)", ""]),
)
domains = st.one_of(
    st.lists(st.text(alphabet="abc-019", min_size=1, max_size=6), min_size=1, max_size=3).map(
        ".".join
    ),
    st.sampled_from(["[127.0.0.1]", "b_c.org", "b.", "ü.example", ""]),
)
tails = st.sampled_from(
    ["", " SIZE=100", "  BODY=8BITMIME SMTPUTF8", "x", " (comment) SIZE=1", "\tSIZE=2", ">"]
)


class _NoHandler:
    pass


FULL = SMTP(_NoHandler())
QUICK = _SinkSmtp(_NoHandler())


@given(local_parts, domains, tails, st.booleans())
@example("a", "b.c", " SIZE=100", True)
@example("x" * 65, "b.c", "", True)  # over the local part's limit: refused by both
def test_the_quick_address_path_agrees_with_aiosmtpd(local, domain, tail, angle):
    address = f"{local}@{domain}"
    argument = (f"<{address}>" if angle else address) + tail
    assert _outcome(QUICK, argument) == _outcome(FULL, argument)


def _outcome(server: SMTP, argument: str) -> object:
    # aiosmtpd's parser raises on a few malformed forms (IndexError on a bare "@"): the quick
    # path must leave those to it, and so raise the same.
    try:
        return server._getaddr(argument)
    except Exception as exc:
        return type(exc)


def test_a_plain_address_does_not_reach_the_email_package(monkeypatch):
    def parser(self: SMTP, argument: str) -> None:
        raise AssertionError(f"parsed {argument!r} with the email package")

    monkeypatch.setattr(SMTP, "_getaddr", parser)
    assert QUICK._getaddr("<first.last+tag@mail.example.org> SIZE=1") == (
        "first.last+tag@mail.example.org",
        "SIZE=1",
    )


def test_mail_and_rcpt_reach_the_record_through_the_quick_path(tmp_path: Path):
    sink = SmtpSink("127.0.0.1", 0, tmp_path / "email.jsonl", delay=0)
    sink.start()
    try:
        with smtplib.SMTP("127.0.0.1", sink.port, timeout=5) as client:
            client.ehlo()
            assert client.mail("sender.name+tag@example.com", ["SIZE=200"])[0] == 250
            assert client.rcpt("first.last@sub.example.org")[0] == 250
            assert client.rcpt("trailing.dot@example.")[0] == 553  # refused, by the parser
            assert client.data(b"Subject: hi\r\n\r\nbody\r\n")[0] == 250
    finally:
        sink.stop()
    [record] = sink.records()
    assert record["mail_from"] == "sender.name+tag@example.com"
    assert record["to"] == "first.last@sub.example.org"
