"""Email through any SMTP server, with smtplib.

The wire contract: SMTP to SMTP_HOST:SMTP_PORT, optional STARTTLS and login, a timeout on every
socket operation; sessions are reused across messages, a message's envelope is pipelined when
the server offers it, and the message goes with BDAT in the same write when the server also
offers CHUNKING (one round trip a message). The notification id travels in the
Message-ID and an `X-Offload-Notification` header, so a receiving sink (or a human) can match
mail to ledger rows.
"""

from __future__ import annotations

import binascii
import functools
import re
import smtplib
import socket
import ssl
import time
from email.header import Header
from email.utils import formataddr, formatdate, parseaddr

from email_validator import EmailNotValidError, validate_email

from app.config import Settings
from app.jobs import EmailJob
from app.logs import mask_email
from app.senders import PermanentSendError, TransientSendError

# What every welcome email is: one UTF-8 text part, quoted-printable (readable in the raw
# message, safe on any SMTP server, lines of at most 76 characters).
_MIME_HEADERS = (
    b"MIME-Version: 1.0\r\n"
    b'Content-Type: text/plain; charset="utf-8"\r\n'
    b"Content-Transfer-Encoding: quoted-printable\r\n"
)
# RFC 5322's recommended longest header line, CRLF excluded.
_HEADER_LINE = 78


def smtp_address(address: str) -> tuple[str, bool]:
    """The address as it goes on the wire, and whether it needs SMTPUTF8 (RFC 6531).

    smtplib encodes commands as ASCII: a non-ASCII domain goes in its IDNA form (`xn--`), which
    every server accepts; a non-ASCII local part has no ASCII form and needs a server that
    offers SMTPUTF8. Registration accepted the address (email-validator), so it parses here;
    ASCII addresses, nearly all of them, skip the parse.
    """
    if address.isascii():
        return address, False
    try:
        parsed = validate_email(address, check_deliverability=False)
    except EmailNotValidError as exc:
        raise PermanentSendError(f"the address cannot be sent to: {exc}") from None
    if parsed.ascii_email is not None:
        return parsed.ascii_email, False
    return f"{parsed.local_part}@{parsed.ascii_domain}", True


def build_message(job: EmailJob, mail_from: str, to: str | None = None) -> bytes:
    """The welcome email as SMTP DATA (CRLF lines), addressed to `to` (the wire form, default
    `job.to`).

    Written out directly: the email package's MIMEText and generator took about a fifth of the
    email consumer's CPU for a message whose shape never changes. The package still encodes
    what is not plain: a non-ASCII or long subject (RFC 2047, folded) and a non-ASCII display
    name in MAIL_FROM (once per sender).
    """
    to = job.to if to is None else to
    subject = job.subject
    if _breaks_a_line(to, subject, job.notification_id):
        raise PermanentSendError("a header value holds a line break")
    # "=?" in the text (the subject carries the user's name) would read as the start of an
    # encoded word, and a mail client would show what it decodes to: encoded, it reads back as
    # written.
    looks_encoded = "=?" in subject
    if looks_encoded or not subject.isascii() or len("Subject: ") + len(subject) > _HEADER_LINE:
        # Plain ASCII is only folded.
        charset = "utf-8" if looks_encoded or not subject.isascii() else "us-ascii"
        subject = Header(subject, charset, header_name="Subject").encode(linesep="\r\n")
    text = job.text
    if "\r" in text:
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    body = binascii.b2a_qp(text.encode(), istext=True).replace(b"\n", b"\r\n")
    return b"".join(
        (
            _from_line(mail_from),
            # An address is never RFC 2047-encoded (that breaks it); a UTF-8 one (SMTPUTF8
            # only) goes as raw UTF-8.
            b"To: %s\r\n" % to.encode(),
            b"Subject: %s\r\n" % subject.encode("ascii"),
            b"Date: %s\r\n" % formatdate(usegmt=True).encode("ascii"),
            # Derived from the notification alone: a resend after a crash (sent, but not yet
            # recorded in the ledger) carries the same Message-ID, which mail systems use to
            # fold duplicates.
            b"Message-ID: <%s@offload.local>\r\n" % job.notification_id.encode(),
            b"X-Offload-Notification: %s\r\n" % job.notification_id.encode(),
            _MIME_HEADERS,
            b"\r\n",
            body,
        )
    )


def _breaks_a_line(*values: str) -> bool:
    return any("\n" in value or "\r" in value for value in values)


@functools.lru_cache(maxsize=8)
def _from_line(mail_from: str) -> bytes:
    """The From header: a non-ASCII display name RFC 2047-encoded, the address as it is."""
    name, address = parseaddr(mail_from)
    if not address or _breaks_a_line(mail_from):
        raise ValueError(f"MAIL_FROM is not an address: {mail_from!r}")
    return b"From: %s\r\n" % formataddr((name, address), "utf-8").encode()


# A connection idle longer than this is checked with NOOP before reuse: servers drop idle
# sessions (RFC 5321 suggests 5 minutes; many are quicker).
CHECK_AFTER_IDLE_SECONDS = 5.0


class SmtpEmailSender:
    """Sends each message over a pooled SMTP session.

    Opening a session costs the TCP handshake, the greeting, EHLO (and STARTTLS and AUTH when
    set) and QUIT: about six round trips before and after the one to four the message needs.
    Sessions are therefore kept and reused, one greenlet at a time each. A session that fails in
    any way is closed, never returned to the pool; if a reused session had silently died, the
    message was not accepted and the error is transient, so the job is retried, not lost.
    """

    def __init__(
        self,
        host: str,
        port: int,
        *,
        mail_from: str,
        username: str = "",
        password: str = "",
        starttls: bool = False,
        timeout: float = 10.0,
        max_idle_sessions: int = 20,
        allow_insecure_login: bool = False,
    ) -> None:
        if username and not starttls and not allow_insecure_login:
            # The same refusal as the settings' (SMTP_ALLOW_INSECURE_LOGIN), for direct callers.
            raise ValueError("an SMTP login without STARTTLS would send the password in clear")
        self.host = host
        self.port = port
        self.mail_from = mail_from
        self.username = username
        self.password = password
        self.starttls = starttls
        self.timeout = timeout
        self.max_idle_sessions = max_idle_sessions
        self.envelope_from = parseaddr(mail_from)[1]
        _from_line(mail_from)  # refuses a MAIL_FROM that is no address now, not on every send
        # (session, monotonic time it was returned); list operations never yield, so greenlets
        # cannot take the same session.
        self._idle: list[tuple[smtplib.SMTP, float]] = []
        self._local_hostname: str | None = None

    @classmethod
    def from_settings(cls, settings: Settings, *, max_idle_sessions: int = 20) -> SmtpEmailSender:
        """A consumer keeps one idle session per concurrent send (services/workers.py)."""
        return cls(
            settings.smtp_host,
            settings.smtp_port,
            mail_from=settings.mail_from,
            username=settings.smtp_username,
            password=settings.smtp_password,
            starttls=settings.smtp_starttls,
            allow_insecure_login=settings.smtp_allow_insecure_login,
            timeout=settings.smtp_timeout,
            max_idle_sessions=max_idle_sessions,
        )

    def _open_session(self) -> smtplib.SMTP:
        if self._local_hostname is None:
            # What EHLO announces. smtplib would look it up (a reverse DNS query, in gevent's
            # thread pool) for every new session.
            self._local_hostname = socket.getfqdn()
        smtp = smtplib.SMTP(
            self.host, self.port, local_hostname=self._local_hostname, timeout=self.timeout
        )
        try:
            if self.starttls:
                smtp.starttls(context=ssl.create_default_context())
            if self.username:
                smtp.login(self.username, self.password)
        except BaseException:
            _close(smtp)
            raise
        return smtp

    def _take_session(self) -> smtplib.SMTP:
        while self._idle:
            smtp, returned_at = self._idle.pop()
            if time.monotonic() - returned_at < CHECK_AFTER_IDLE_SECONDS:
                return smtp
            try:
                if smtp.noop()[0] == 250:
                    return smtp
            except (smtplib.SMTPException, OSError):
                pass
            _close(smtp)
        return self._open_session()

    def _return_session(self, smtp: smtplib.SMTP) -> None:
        if len(self._idle) < self.max_idle_sessions:
            self._idle.append((smtp, time.monotonic()))
        else:
            _close(smtp)

    def close(self) -> None:
        while self._idle:
            _close(self._idle.pop()[0])

    def send(self, job: EmailJob) -> None:
        to, needs_smtputf8 = smtp_address(job.to)
        message = build_message(job, self.mail_from, to)
        smtp: smtplib.SMTP | None = None
        try:
            smtp = self._take_session()
            options: list[str] = []
            smtp.ehlo_or_helo_if_needed()
            if needs_smtputf8:
                if not smtp.has_extn("smtputf8"):
                    raise PermanentSendError(
                        _masked(
                            job,
                            "the mail server does not offer SMTPUTF8, which an address "
                            "with a non-ASCII local part needs",
                        )
                    )
                options.append("SMTPUTF8")
            if smtp.has_extn("pipelining") and smtp.has_extn("chunking"):
                send_chunked(smtp, self.envelope_from, to, message, options)
            elif smtp.has_extn("pipelining"):
                send_pipelined(smtp, self.envelope_from, to, message, options)
            else:
                smtp.sendmail(self.envelope_from, [to], message, mail_options=options)
            self._return_session(smtp)
            smtp = None
        except smtplib.SMTPRecipientsRefused as exc:
            code, reply = min(exc.recipients.values())
            raise _classify(code, _masked(job, f"recipient refused: {code} {reply!r}")) from exc
        except smtplib.SMTPResponseException as exc:
            detail = f"SMTP {exc.smtp_code}: {exc.smtp_error!r}"
            raise _classify(exc.smtp_code, _masked(job, detail)) from exc
        except (smtplib.SMTPException, OSError) as exc:
            raise TransientSendError(_masked(job, f"SMTP connection failed: {exc!r}")) from exc
        finally:
            if smtp is not None:
                _close(smtp)  # after an error the session's state is unknown


def send_pipelined(
    smtp: smtplib.SMTP, sender: str, recipient: str, message: bytes, options: list[str]
) -> None:
    """Send one message over a session whose server offers PIPELINING (RFC 2920), as nearly
    every mail server does: MAIL, RCPT and DATA go in one write and their replies are read
    after, so the message costs two round trips instead of four. Each round trip is a wait on
    the network, and on a machine it shares with the server two wakeups of each process.

    A refusal raises what smtplib's `sendmail` raises for it, so it is classified alike. The
    caller closes the session after any error: nothing here resets it.
    """
    smtp.send(_envelope(smtp, sender, recipient, message, options) + "DATA\r\n")
    mail, rcpt, data = smtp.getreply(), smtp.getreply(), smtp.getreply()
    if data[0] == 354 and _envelope_refused(mail, rcpt):
        # The server took DATA though it refused the envelope: the message must still be
        # ended, and an empty one with no valid recipient is delivered to nobody (RFC 2920,
        # 3.1).
        smtp.send(b".\r\n")
        smtp.getreply()
    _raise_if_refused(mail, rcpt, sender, recipient)
    if data[0] != 354:
        raise smtplib.SMTPDataError(*data)
    # As smtplib's `data`: a line that starts with a dot gets another (RFC 5321, 4.5.2).
    stuffed = _LEADING_DOT.sub(b"..", _ending_in_a_line_break(message))
    smtp.send(stuffed + b".\r\n")
    code, reply = smtp.getreply()
    if code != 250:
        raise smtplib.SMTPDataError(code, reply)


def send_chunked(
    smtp: smtplib.SMTP, sender: str, recipient: str, message: bytes, options: list[str]
) -> None:
    """Send one message with BDAT (CHUNKING, RFC 3030) over a session that also pipelines:
    MAIL, RCPT, `BDAT <size> LAST` and the message itself go in one write, and the three
    replies are read after. One round trip, where DATA needs two: DATA must wait for its 354
    before the message may follow, BDAT states the message's size instead. Nothing is
    dot-stuffed, since the server counts octets rather than looking for the lone dot.

    The server reads the stated octets whatever it answered to MAIL and RCPT (RFC 3030, 2), so
    a refused envelope leaves the session in step, the message discarded. A refusal raises what
    `send_pipelined` raises for it.
    """
    message = _ending_in_a_line_break(message)
    envelope = _envelope(smtp, sender, recipient, message, options)
    smtp.send((envelope + f"BDAT {len(message)} LAST\r\n").encode(smtp.command_encoding) + message)
    mail, rcpt, chunk = smtp.getreply(), smtp.getreply(), smtp.getreply()
    _raise_if_refused(mail, rcpt, sender, recipient)
    if chunk[0] != 250:
        raise smtplib.SMTPDataError(*chunk)


def _envelope(
    smtp: smtplib.SMTP, sender: str, recipient: str, message: bytes, options: list[str]
) -> str:
    """The MAIL and RCPT lines of a pipelined message."""
    if smtp.has_extn("size"):
        options = [*options, f"SIZE={len(message)}"]
    if "SMTPUTF8" in options:
        smtp.command_encoding = "utf-8"  # what smtplib's `mail` does for the same option
    parameters = "".join(f" {option}" for option in options)
    # Both addresses are bare already: the recipient's was validated at registration (and
    # `build_message` refused a line break in it), the sender's parsed from MAIL_FROM once.
    # smtplib's quoteaddr would parse each again, 8% of the email consumer's CPU.
    return f"MAIL FROM:<{sender}>{parameters}\r\nRCPT TO:<{recipient}>\r\n"


def _envelope_refused(mail: tuple[int, bytes], rcpt: tuple[int, bytes]) -> bool:
    return mail[0] != 250 or rcpt[0] not in (250, 251)


def _raise_if_refused(
    mail: tuple[int, bytes], rcpt: tuple[int, bytes], sender: str, recipient: str
) -> None:
    if mail[0] != 250:
        raise smtplib.SMTPSenderRefused(mail[0], mail[1], sender)
    if rcpt[0] not in (250, 251):
        raise smtplib.SMTPRecipientsRefused({recipient: rcpt})


def _ending_in_a_line_break(message: bytes) -> bytes:
    return message if message.endswith(b"\r\n") else message + b"\r\n"


_LEADING_DOT = re.compile(rb"^\.", re.MULTILINE)


def _close(smtp: smtplib.SMTP) -> None:
    try:
        smtp.quit()
    except (smtplib.SMTPException, OSError):
        smtp.close()


def _masked(job: EmailJob, detail: str) -> str:
    # Errors are stored on the notification and shown on status pages: servers often quote the
    # recipient in their replies, so the address is masked there.
    masked = detail.replace(job.to, mask_email(job.to))
    if not job.to.isascii():  # the reply may quote the wire (IDNA) form instead
        local = job.to.rpartition("@")[0]
        masked = re.sub(rf"{re.escape(local)}@[\w.-]+", mask_email(job.to), masked)
    return masked


def _classify(code: int, detail: str) -> TransientSendError | PermanentSendError:
    # RFC 5321: 4yz is a transient negative reply, 5yz a permanent one.
    if 400 <= code < 500:
        return TransientSendError(detail)
    return PermanentSendError(detail)
