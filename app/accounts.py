"""The verification domain: confirm a user's email address (signed link) and phone (SMS code).

One path for the JSON API and the browser pages; each view maps these errors to its own output.
No Flask here. Both operations are race-safe: the state changes are conditional UPDATEs, so two
clicks on the same link, or two code attempts sent at once from different workers, are counted
and decided by the database, not by what this process read a moment earlier.
"""

from __future__ import annotations

from datetime import UTC, datetime
from string import hexdigits

from sqlalchemy import insert, select, update
from sqlalchemy.orm import Session

from app.config import Settings
from app.events import EVENTS, USER_EMAIL_VERIFIED, USER_PHONE_VERIFIED, user_event
from app.models import User, utcnow
from app.verification import (
    SMS_CODE_DIGITS,
    ExpiredToken,
    InvalidToken,
    claim_matches,
    hash_status_token,
    read_email_token,
    sms_code_matches,
)

# Longer than any sensible way of typing six digits with spaces; anything longer is refused
# before it is even normalised.
CODE_MAX_LENGTH = 20
_USER_ID_LENGTH = 32  # 32 hex digits, see app.models.new_id


class VerificationError(Exception):
    """Base of what a verification can refuse. `code` names the case for machines, `message`
    says it to a person, `fields` ties it to a form field when one is to blame."""

    code = "verification_failed"

    def __init__(
        self, message: str, fields: dict[str, str] | None = None, user: User | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        self.fields = fields or {}
        self.user = user


class UnknownUser(VerificationError):
    code = "not_found"


class InvalidLink(VerificationError):
    code = "invalid_link"


class ExpiredLink(VerificationError):
    code = "link_expired"


class AlreadyVerified(VerificationError):
    code = "already_verified"


class InvalidCode(VerificationError):
    """Not a code at all (wrong length, letters): refused without spending an attempt."""

    code = "invalid_code"


class WrongCode(VerificationError):
    code = "wrong_code"

    def __init__(self, message: str, attempts_left: int, user: User) -> None:
        super().__init__(message, {"code": message}, user)
        self.attempts_left = attempts_left


class CodeExpired(VerificationError):
    code = "code_expired"


class TooManyAttempts(VerificationError):
    code = "too_many_attempts"


def is_user_id(value: str) -> bool:
    return len(value) == _USER_ID_LENGTH and all(c in hexdigits for c in value)


def find_user(session: Session, user_id: str) -> User | None:
    """The user with this id, or None; ids that cannot exist are not even looked up.

    For the server's own use (the browser session holds the id): an id from a client opens
    nothing, see find_user_by_status_token.
    """
    return session.get(User, user_id) if is_user_id(user_id) else None


def find_user_by_status_token(session: Session, token: str) -> User | None:
    """The user a status token was handed to, or None."""
    if not 20 <= len(token) <= 100:
        return None
    return session.scalars(
        select(User).where(User.status_token_hash == hash_status_token(token))
    ).first()


def check_email_token(session: Session, settings: Settings, token: str) -> User:
    """The user a confirmation link is for, changing nothing; the same errors as verify_email.

    Opening the link (GET) only checks it: link scanners and mail previews follow links, so the
    address is confirmed by the POST of the page's button (verify_email).
    """
    try:
        claim = read_email_token(settings.secret_key, token, max_age=settings.verification_max_age)
    except ExpiredToken:
        raise ExpiredLink(
            "This confirmation link has expired. Links work for "
            f"{settings.verification_max_age // 3600} hours."
        ) from None
    except InvalidToken:
        raise InvalidLink(
            "This confirmation link is not valid. Check that you opened the "
            "whole link from the email."
        ) from None
    user = (
        session.scalars(
            select(User).where(User.email_verification_id == claim.verification_id)
        ).first()
        if is_user_id(claim.verification_id)
        else None
    )
    if user is None or not claim_matches(settings.secret_key, claim, user.email):
        raise InvalidLink("This confirmation link is not valid for any account.")
    if user.email_verified_at is not None:
        raise AlreadyVerified(
            "This link was already used: your email address is confirmed.", user=user
        )
    return user


def verify_email(session: Session, settings: Settings, token: str) -> User:
    """Mark the user's email address verified from the link's token, once."""
    user = check_email_token(session, settings, token)
    now = utcnow()
    changed = session.execute(
        update(User)
        .where(User.id == user.id, User.email_verified_at.is_(None))
        .values(email_verified_at=now)
        .returning(User.id)
        .execution_options(synchronize_session=False)
    ).first()
    if changed is not None:
        # In the verification's own transaction: the event exists exactly when the change does.
        session.execute(insert(EVENTS), [user_event(USER_EMAIL_VERIFIED, user.id, now)])
    session.commit()
    session.refresh(user)
    if changed is None:  # another request used the link a moment ago
        raise AlreadyVerified(
            "This link was already used: your email address is confirmed.", user=user
        )
    return user


def normalize_code(code: str) -> str:
    """The digits of a code as typed ("123 456", "123-456"), or InvalidCode."""
    message = f"Enter the {SMS_CODE_DIGITS}-digit code from the SMS."
    if len(code) > CODE_MAX_LENGTH:
        raise InvalidCode(message, {"code": message})
    digits = "".join(c for c in code if c not in " -\t")
    # isdigit() alone accepts other scripts' digits and superscripts; the code is ASCII.
    if len(digits) != SMS_CODE_DIGITS or not (digits.isascii() and digits.isdigit()):
        raise InvalidCode(message, {"code": message})
    return digits


def verify_phone(session: Session, settings: Settings, user_id: str, code: str) -> User:
    """Check an SMS code: each try spends one of `sms_code_max_attempts`, the code expires.

    The attempt is counted (atomically, in the database) before the code is compared, so
    concurrent guesses cannot get more tries than the limit between them.
    """
    user = find_user(session, user_id)
    if user is None:
        raise UnknownUser("No user with this id.")
    if user.phone_verified_at is not None:
        raise AlreadyVerified("Your phone number is already confirmed.", user=user)
    try:
        digits = normalize_code(code)
    except InvalidCode as exc:
        exc.user = user
        raise
    limit = settings.sms_code_max_attempts
    if user.sms_code_attempts >= limit:
        raise _too_many(user)
    if (
        user.sms_code_hash is None
        or user.sms_code_expires_at is None
        or _aware(user.sms_code_expires_at) <= utcnow()
    ):
        raise CodeExpired(
            f"This code has expired. Codes work for {settings.sms_code_max_age // 60} minutes.",
            {"code": "This code has expired."},
            user,
        )

    counted = session.execute(
        update(User)
        .where(
            User.id == user.id,
            User.phone_verified_at.is_(None),
            User.sms_code_attempts < limit,
        )
        .values(sms_code_attempts=User.sms_code_attempts + 1)
        .returning(User.id)
        .execution_options(synchronize_session=False)
    ).first()
    session.commit()
    session.refresh(user)
    if counted is None:
        if user.phone_verified_at is not None:
            raise AlreadyVerified("Your phone number is already confirmed.", user=user)
        raise _too_many(user)

    if not sms_code_matches(settings.secret_key, user.id, digits, user.sms_code_hash or ""):
        left = max(0, limit - user.sms_code_attempts)
        message = (
            f"That code is not right. You have {left} attempt{'s' if left != 1 else ''} left."
            if left
            else "That code is not right, and that was the last attempt."
        )
        raise WrongCode(message, left, user)

    now = utcnow()
    verified = session.execute(
        update(User)
        .where(User.id == user.id, User.phone_verified_at.is_(None))
        .values(phone_verified_at=now, sms_code_hash=None, sms_code_expires_at=None)
        .returning(User.id)
        .execution_options(synchronize_session=False)
    ).first()
    if verified is not None:
        # Only the request that made the change reports it (two right codes sent at once).
        session.execute(insert(EVENTS), [user_event(USER_PHONE_VERIFIED, user.id, now)])
    session.commit()
    session.refresh(user)
    return user


def _too_many(user: User) -> TooManyAttempts:
    return TooManyAttempts(
        "Too many wrong codes: this code no longer works.",
        {"code": "Too many wrong codes: this code no longer works."},
        user,
    )


def _aware(moment: datetime) -> datetime:
    # SQLite hands back naive datetimes even for timezone-aware columns; they were written UTC.
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)
