"""Resend: a new email link or SMS code for a user not yet verified. No Flask here.

Once a code has expired or its attempts are spent, or a message never arrived, the user asks
for another. A resend is a new notification row, written in the same transaction that counts
the resend, and handed off like a registration's (the dispatch mode DISPATCH_MODE, the outbox,
the queue, the ledger), so its idempotency key and its ledger entry are its own. A new SMS code
replaces the old one (its hash, its expiry) and starts its attempts again; a new email carries
a new link to the same verification id (older links keep working until they expire).

A user may resend RESEND_MAX times in all (both channels together), at least
RESEND_COOLDOWN_SECONDS apart; both are decided by one conditional UPDATE, so parallel requests
cannot get more. The SMS budgets (app/smsbudget.py) apply to resent SMS as to the first.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

from sqlalchemy import insert, or_, update
from sqlalchemy.orm import Session

from app.accounts import AlreadyVerified
from app.config import Settings
from app.db import database_now
from app.jobs import CHANNELS, SmsJob, job_to_dict
from app.ledger import new_lease_token
from app.models import Notification, User, new_id, utcnow
from app.registration import NOTIFICATION_COLUMNS, email_job, sms_text
from app.smsbudget import HELD, charge_sms, sms_budgets
from app.verification import hash_sms_code, make_sms_code

if TYPE_CHECKING:
    from app.dispatch import Dispatcher


class ResendError(Exception):
    """Why a resend was refused; `code` for machines, `message` for a person."""

    code = "resend_refused"

    def __init__(self, message: str, *, retry_after: int = 0) -> None:
        super().__init__(message)
        self.message = message
        self.retry_after = retry_after


class UnknownChannel(ResendError):
    code = "invalid_channel"


class ResendTooSoon(ResendError):
    code = "resend_too_soon"


class TooManyResends(ResendError):
    code = "too_many_resends"


def resend(
    session: Session, settings: Settings, dispatcher: Dispatcher, user: User, channel: str
) -> Notification:
    """Send the user a new link (`email`) or code (`sms`); return the new notification row."""
    if channel not in CHANNELS:
        raise UnknownChannel(f"Ask for one of: {', '.join(CHANNELS)}.")
    if channel == "email" and user.email_verified_at is not None:
        raise AlreadyVerified("Your email address is already confirmed.", user=user)
    if channel == "sms" and user.phone_verified_at is not None:
        raise AlreadyVerified("Your phone number is already confirmed.", user=user)
    now = utcnow()
    cooldown = timedelta(seconds=settings.resend_cooldown_seconds)
    counted = session.execute(
        update(User)
        .where(
            User.id == user.id,
            User.resends < settings.resend_max,
            or_(User.last_resend_at.is_(None), User.last_resend_at <= now - cooldown),
        )
        .values(resends=User.resends + 1, last_resend_at=now)
        .returning(User.id)
        .execution_options(synchronize_session=False)
    ).first()
    if counted is None:
        session.rollback()
        session.refresh(user)
        raise _refusal(settings, user, now)

    mode = settings.dispatch_mode
    status, note = dispatcher.initial_status(mode)
    lease_seconds = dispatcher.inline_lease_seconds(mode)
    notification_id = new_id()
    connection = session.connection()
    if channel == "sms":
        code = make_sms_code()
        connection.execute(
            update(User)
            .where(User.id == user.id)
            .values(
                sms_code_hash=hash_sms_code(settings.secret_key, user.id, code),
                sms_code_expires_at=now + timedelta(seconds=settings.sms_code_max_age),
                sms_code_attempts=0,
            )
        )
        job: object = SmsJob(notification_id, user.phone, sms_text(settings, code))
        held = charge_sms(connection, sms_budgets(settings), user.phone)
        if held:
            status, note = HELD, held
    else:
        job = email_job(settings, user, notification_id)
    notification = Notification(
        id=notification_id,
        user_id=user.id,
        channel=channel,
        status=status,
        payload=job_to_dict(job),  # type: ignore[arg-type]
        attempts=0,
        last_error=note,
        created_at=now,
        send_lease_token=new_lease_token() if lease_seconds > 0 else None,
    )
    statement = insert(Notification)
    if notification.send_lease_token is not None:
        statement = statement.values(send_lease_until=database_now(lease_seconds))
    connection.execute(
        statement, [{name: getattr(notification, name) for name in NOTIFICATION_COLUMNS}]
    )
    session.commit()
    if notification.status != HELD:
        dispatcher.dispatch(mode, session, [notification])
    session.refresh(user)
    return notification


def _refusal(settings: Settings, user: User, now: datetime) -> ResendError:
    if user.resends >= settings.resend_max:
        return TooManyResends(
            f"You have asked for {settings.resend_max} new messages already, the most we send. "
            "If none arrives, check the address and number, or register again later."
        )
    last = user.last_resend_at or now
    # SQLite hands back naive datetimes; they were written UTC.
    last = last if last.tzinfo is not None else last.replace(tzinfo=UTC)
    wait = max(1, math.ceil((last - now).total_seconds() + settings.resend_cooldown_seconds))
    return ResendTooSoon(
        f"We sent a new message a moment ago. Wait {wait} seconds before asking again.",
        retry_after=wait,
    )
