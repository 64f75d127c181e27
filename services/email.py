"""Email through any SMTP server, with smtplib.

The wire contract: one SMTP session per message to SMTP_HOST:SMTP_PORT, optional STARTTLS and
login, a timeout on every socket operation. The notification id travels in the Message-ID and an
`X-Offload-Notification` header, so a receiving sink (or a human) can match mail to ledger rows.
"""

from __future__ import annotations

import smtplib
import ssl
from email.message import EmailMessage

from app.config import Settings
from app.jobs import EmailJob
from app.logs import mask_email
from services.delivery import PermanentSendError, TransientSendError


def build_message(job: EmailJob, mail_from: str) -> EmailMessage:
    message = EmailMessage()
    message["From"] = mail_from
    message["To"] = job.to
    message["Subject"] = job.subject
    # Derived from the notification alone: a resend after a crash (sent, but not yet recorded
    # in the ledger) carries the same Message-ID, which mail systems use to fold duplicates.
    message["Message-ID"] = f"<{job.notification_id}@offload.local>"
    message["X-Offload-Notification"] = job.notification_id
    message.set_content(job.text)
    return message


class SmtpEmailSender:
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
    ) -> None:
        self.host = host
        self.port = port
        self.mail_from = mail_from
        self.username = username
        self.password = password
        self.starttls = starttls
        self.timeout = timeout

    @classmethod
    def from_settings(cls, settings: Settings) -> SmtpEmailSender:
        return cls(
            settings.smtp_host,
            settings.smtp_port,
            mail_from=settings.mail_from,
            username=settings.smtp_username,
            password=settings.smtp_password,
            starttls=settings.smtp_starttls,
            timeout=settings.smtp_timeout,
        )

    def send(self, job: EmailJob) -> None:
        message = build_message(job, self.mail_from)
        try:
            with smtplib.SMTP(self.host, self.port, timeout=self.timeout) as smtp:
                if self.starttls:
                    smtp.starttls(context=ssl.create_default_context())
                if self.username:
                    smtp.login(self.username, self.password)
                smtp.send_message(message)
        except smtplib.SMTPRecipientsRefused as exc:
            code, reply = min(exc.recipients.values())
            raise _classify(code, _masked(job, f"recipient refused: {code} {reply!r}")) from exc
        except smtplib.SMTPResponseException as exc:
            detail = f"SMTP {exc.smtp_code}: {exc.smtp_error!r}"
            raise _classify(exc.smtp_code, _masked(job, detail)) from exc
        except (smtplib.SMTPException, OSError) as exc:
            raise TransientSendError(_masked(job, f"SMTP connection failed: {exc!r}")) from exc


def _masked(job: EmailJob, detail: str) -> str:
    # Errors are stored on the notification and shown on status pages: servers often quote the
    # recipient in their replies, so the address is masked there.
    return detail.replace(job.to, mask_email(job.to))


def _classify(code: int, detail: str) -> TransientSendError | PermanentSendError:
    # RFC 5321: 4yz is a transient negative reply, 5yz a permanent one.
    if 400 <= code < 500:
        return TransientSendError(detail)
    return PermanentSendError(detail)
