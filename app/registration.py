"""The registration domain: validate, store the user with its outbox, hand off the notifications.

One path for the JSON API and the browser form; each view maps these errors to its own output.
No Flask here.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import phonenumbers
from email_validator import EmailNotValidError, validate_email
from sqlalchemy import Insert, delete, insert, or_, select
from sqlalchemy.orm import Session
from sqlalchemy.orm.attributes import set_committed_value
from sqlalchemy.sql.elements import ColumnElement

from app.config import BASELINE_MODE, DISPATCH_MODES, Settings
from app.db import EngineWrites, database_now, detached, upsert_insert
from app.events import (
    EVENTS,
    REQUEST_HOLDER,
    USER_REGISTERED,
    EventMessage,
    encode_event,
    user_event,
)
from app.groupcommit import group_commit
from app.jobs import EmailJob, Job, SmsJob, job_to_dict
from app.ledger import new_lease_token
from app.models import Notification, User, email_key, new_id, random_id, utcnow
from app.smsbudget import HELD, SmsBudgets, charge_sms, sms_budgets
from app.verification import (
    hash_sms_code,
    hash_status_token,
    make_email_token,
    make_sms_code,
    make_status_token,
)

if TYPE_CHECKING:
    from app.dispatch import Dispatcher

NAME_MAX_LENGTH = 200
# Without a leading +country code, numbers are read as this region's.
DEFAULT_PHONE_REGION = "US"


class RegistrationError(Exception):
    """Base of what a registration can refuse; `fields` maps a field name to its message."""

    def __init__(self, message: str, fields: dict[str, str]) -> None:
        super().__init__(message)
        self.message = message
        self.fields = fields


class InvalidRegistration(RegistrationError):
    pass


class AlreadyRegistered(RegistrationError):
    pass


@dataclass(frozen=True)
class Registration:
    name: str
    email: str
    phone: str  # E.164


@dataclass
class Registered:
    user: User
    notifications: list[Notification]
    timings_ms: dict[str, float] = field(default_factory=dict)
    mode: str = ""  # the dispatch mode used (register_and_notify)
    # Opens the user's status (API); handed out once, here, and stored only hashed.
    status_token: str = ""
    # Its `user.registered` event, as it goes on the wire: in queued mode the request
    # publishes it, and the email and SMS consumers each find their row by its id.
    event: EventMessage | None = None


def _text(data: Mapping[str, Any], key: str) -> str | None:
    value = data.get(key)
    return value.strip() if isinstance(value, str) else None


def validate_registration(data: Mapping[str, Any]) -> Registration:
    """Return a clean Registration, or raise InvalidRegistration naming every bad field."""
    errors: dict[str, str] = {}

    name = _text(data, "name")
    if not name:
        errors["name"] = "Enter your name."
    elif len(name) > NAME_MAX_LENGTH:
        errors["name"] = f"Use at most {NAME_MAX_LENGTH} characters."
    elif not name.isprintable():
        errors["name"] = "Use printable characters only."

    email = _text(data, "email")
    if not email:
        errors["email"] = "Enter your email address."
    else:
        try:
            # No DNS look-up: it is slow, and a registration should not depend on the network.
            email = validate_email(email, check_deliverability=False).normalized
        except EmailNotValidError as exc:
            errors["email"] = str(exc)

    phone = _text(data, "phone")
    if not phone:
        errors["phone"] = "Enter your mobile phone number."
    else:
        try:
            parsed = phonenumbers.parse(phone, DEFAULT_PHONE_REGION)
        except phonenumbers.NumberParseException:
            errors["phone"] = "Enter a phone number, with its country code (e.g. +44 7911 123456)."
        else:
            if not phonenumbers.is_valid_number(parsed):
                errors["phone"] = "This is not a valid phone number."
            else:
                phone = phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164)

    if errors:
        raise InvalidRegistration("Some fields are missing or invalid.", errors)
    assert name and email and phone
    return Registration(name=name, email=email, phone=phone)


def _holders(registration: Registration) -> ColumnElement[bool]:
    """The users holding this registration's address or number."""
    return or_(User.email_key == email_key(registration.email), User.phone == registration.phone)


def _duplicate_fields(session: Session, registration: Registration) -> dict[str, str]:
    taken = session.execute(select(User.email_key, User.phone).where(_holders(registration))).all()
    fields: dict[str, str] = {}
    if any(row.email_key == email_key(registration.email) for row in taken):
        fields["email"] = "This email address is already registered."
    if any(row.phone == registration.phone for row in taken):
        fields["phone"] = "This phone number is already registered."
    return fields or {"email": "This email address or phone number is already registered."}


def _release_expired(session: Session, settings: Settings, registration: Registration) -> bool:
    """Delete the registrations holding this address or number that were never verified and
    have expired (UNVERIFIED_EXPIRY_SECONDS); whether any was. Runs only after the unique index
    refused a registration, never on the normal path. The caller commits.

    "Verified" means both the email address and the phone number: one person could otherwise
    hold another's number for ever by verifying only their own address. The outbox rows go
    with the user (ON DELETE CASCADE).
    """
    cutoff = utcnow() - timedelta(seconds=settings.unverified_expiry_seconds)
    deleted = session.execute(
        delete(User)
        .where(
            _holders(registration),
            User.created_at < cutoff,
            or_(User.email_verified_at.is_(None), User.phone_verified_at.is_(None)),
        )
        .returning(User.id)
        .execution_options(synchronize_session=False)
    ).all()
    return bool(deleted)


def sms_text(settings: Settings, code: str) -> str:
    return (
        f"Your Offload verification code is {code}. It expires in "
        f"{settings.sms_code_max_age // 60} minutes."
    )


def email_job(settings: Settings, user: User, notification_id: str) -> EmailJob:
    """The email with the confirmation link (at registration, and on a resend)."""
    token = make_email_token(settings.secret_key, user.email_verification_id or "", user.email)
    link = f"{settings.base_url.rstrip('/')}/verify-email/{token}"
    return EmailJob(
        notification_id=notification_id,
        to=user.email,
        subject="Welcome to Offload: confirm your email address",
        text=(
            f"Hello {user.name},\n\n"
            f"Thanks for signing up. Confirm your email address by opening this link:\n\n"
            f"{link}\n\n"
            f"The link works for {settings.verification_max_age // 3600} hours.\n"
        ),
    )


def build_notifications(
    settings: Settings, user: User, sms_code: str, **columns: Any
) -> list[Notification]:
    """The registration's two outbox rows, detached (app/db.py `detached`): `columns` are what
    both hold besides their own id, channel and payload (status, lease, event...)."""
    email_id, sms_id = new_id(), new_id()
    jobs: list[Job] = [
        email_job(settings, user, email_id),
        SmsJob(notification_id=sms_id, to=user.phone, body=sms_text(settings, sms_code)),
    ]
    return [
        detached(
            Notification,
            id=job.notification_id,
            user_id=user.id,
            channel=job.kind,
            payload=job_to_dict(job),
            **columns,
        )
        for job in jobs
    ]


def register_user(
    session: Session,
    settings: Settings,
    registration: Registration,
    *,
    initial_status: str = "pending",
    initial_error: str | None = None,
    send_lease_seconds: float = 0.0,
    event_lease_seconds: float = 0.0,
    sms_budgets: SmsBudgets | None = None,
) -> Registered:
    """Write the user, its two outbox rows and its `user.registered` event in one transaction,
    and commit. On SQLite that transaction is shared with the other registrations of the
    moment (app/groupcommit.py).

    The rows are written through SQLAlchemy Core, not the ORM's unit of work: three INSERTs and
    one commit is all a registration needs, and the unit of work cost more CPU than everything
    else on the request path together. `initial_status` is decided by the caller before the
    commit (the insert-only baseline writes its rows `skipped`), so no second transaction is
    needed to close them. With `sms_budgets`, the SMS is counted against them in the same
    transaction and written `held` when over one. With `send_lease_seconds` (serial and
    parallel modes, which send inline) the rows are written already holding a send lease,
    timed by the database's clock, so no consumer sends a relayed copy while the request sends
    its own. With `event_lease_seconds` the event is written held by the request
    (REQUEST_HOLDER): the relay leaves it alone that long, because the request publishes it
    (queued) or releases it once its inline sends are recorded. The objects returned are
    detached copies for the response.

    The unique indexes decide whether the email or phone is taken, so two simultaneous
    registrations of the same address cannot both succeed. The user's INSERT does nothing
    when one refuses it, rather than raising, so a refused registration does not roll back
    the others committed with it.
    """
    started = time.perf_counter()
    code = make_sms_code()
    now = utcnow()
    user_id = new_id()
    status_token = make_status_token()
    user = detached(
        User,
        id=user_id,
        name=registration.name,
        email=registration.email,
        email_key=email_key(registration.email),
        phone=registration.phone,
        created_at=now,
        sms_code_hash=hash_sms_code(settings.secret_key, user_id, code),
        sms_code_expires_at=now + timedelta(seconds=settings.sms_code_max_age),
        sms_code_attempts=0,
        email_verified_at=None,
        phone_verified_at=None,
        status_token_hash=hash_status_token(status_token),
        email_verification_id=random_id(),  # the email link shows it
    )
    # The domain event rides in the same transaction: it exists exactly when the user does.
    registered_event = user_event(USER_REGISTERED, user_id, now)
    if event_lease_seconds > 0:
        registered_event["claimed_by"] = REQUEST_HOLDER
    notifications = build_notifications(
        settings,
        user,
        code,
        status=initial_status,
        last_error=initial_error,
        attempts=0,
        created_at=now,
        queued_at=None,
        sent_at=None,
        send_lease_token=new_lease_token() if send_lease_seconds > 0 else None,
        event_id=registered_event["id"],
    )
    sms = next(n for n in notifications if n.channel == "sms")

    def write(writes: EngineWrites) -> bool:
        """The registration's rows; False, having written nothing, when a unique index refuses
        the user (its address or number is taken)."""
        user_row = _columns(user, USER_COLUMNS)
        if not writes.execute(_insert_user_unless_taken(writes.connection.dialect.name), user_row):
            return False
        if sms_budgets is not None:
            # Counted here, in the registration's own transaction: a refused registration
            # costs no budget, and no extra transaction is spent.
            held = charge_sms(writes.connection, sms_budgets, user.phone)
            sms.status, sms.last_error = (HELD, held) if held else (initial_status, initial_error)
        writes.execute(
            _insert_notifications(send_lease_seconds),
            [_columns(n, NOTIFICATION_COLUMNS) for n in notifications],
        )
        writes.execute(_insert_event(event_lease_seconds), registered_event)
        return True

    writer = group_commit(session.get_bind().engine)
    if writer is not None:
        written = writer.write(write)
    else:
        written = write(EngineWrites(session.connection()))
        if written:
            session.commit()
    if not written:
        session.rollback()
        # An expired, unverified registration may hold the address: it gives way. (Rare, so
        # written in the request's own transaction, outside the group commit.)
        if not (
            _release_expired(session, settings, registration)
            and write(EngineWrites(session.connection()))
        ):
            session.rollback()
            raise AlreadyRegistered("Already registered.", _duplicate_fields(session, registration))
        session.commit()
    # Detached and complete: the response reads them without touching the database again.
    set_committed_value(user, "notifications", notifications)
    elapsed = (time.perf_counter() - started) * 1000
    return Registered(
        user=user,
        notifications=notifications,
        timings_ms={"db": elapsed},
        status_token=status_token,
        event=EventMessage(
            registered_event["id"], USER_REGISTERED, encode_event(registered_event["body"])
        ),
    )


USER_COLUMNS = (
    "id",
    "name",
    "email",
    "email_key",
    "phone",
    "created_at",
    "sms_code_hash",
    "sms_code_expires_at",
    "sms_code_attempts",
    "status_token_hash",
    "email_verification_id",
)
NOTIFICATION_COLUMNS = (
    "id",
    "user_id",
    "channel",
    "status",
    "payload",
    "attempts",
    "last_error",
    "created_at",
    "send_lease_token",
    "event_id",
)


# The registration's statements are built once: building one, and its cache key, cost more CPU
# than a small INSERT's execution. A lease is timed by the database's clock (database_now).


@functools.lru_cache(maxsize=4)
def _insert_user_unless_taken(dialect_name: str) -> Insert:
    """The user's INSERT, writing nothing when any unique index (address, number, token)
    refuses it; it returns the id it wrote. Both SQLite and PostgreSQL spell it ON CONFLICT DO
    NOTHING, but each dialect builds its own."""
    statement: Insert = upsert_insert(dialect_name)(User).on_conflict_do_nothing()
    return statement.returning(User.id)


@functools.lru_cache(maxsize=8)
def _insert_notifications(lease_seconds: float) -> Insert:
    """The notification rows, written holding a send lease of `lease_seconds` (0: none)."""
    statement = insert(Notification)
    if lease_seconds > 0:
        statement = statement.values(send_lease_until=database_now(lease_seconds))
    return statement


@functools.lru_cache(maxsize=8)
def _insert_event(lease_seconds: float) -> Insert:
    """The event row, held by its request for `lease_seconds` (0: the relay's at once)."""
    statement = insert(EVENTS)
    if lease_seconds > 0:
        statement = statement.values(claimed_until=database_now(lease_seconds))
    return statement


def _columns(row: object, names: tuple[str, ...]) -> dict[str, Any]:
    return {name: getattr(row, name) for name in names}


def register_and_notify(
    session: Session,
    settings: Settings,
    dispatcher: Dispatcher,
    data: Mapping[str, Any],
    requested_mode: str | None,
) -> Registered:
    """The whole use case, shared by the API and the form: validate, store, hand off.

    `requested_mode` is what the client asked for (`?mode=`, the form's menu), or None.
    """
    mode = choose_mode(settings, requested_mode)
    registration = validate_registration(data)
    check_country(settings, registration)
    initial_status, initial_error = dispatcher.initial_status(mode)
    registered = register_user(
        session,
        settings,
        registration,
        initial_status=initial_status,
        initial_error=initial_error,
        send_lease_seconds=dispatcher.inline_lease_seconds(mode),
        event_lease_seconds=dispatcher.event_lease_seconds(mode),
        sms_budgets=sms_budgets(settings) if initial_status == "pending" else None,
    )
    registered.mode = mode
    to_send = [n for n in registered.notifications if n.status != HELD]
    registered.timings_ms.update(
        dispatcher.dispatch(mode, session, to_send, event=registered.event)
    )
    return registered


def choose_mode(settings: Settings, requested: str | None) -> str:
    """The dispatch mode of a registration: DISPATCH_MODE, or the client's choice where the
    operator lets clients choose (ALLOW_CLIENT_MODE; in development by default). The mode
    decides what a registration costs (inline sends hold a web greenlet for two sends), so in
    production it is the operator's to pick."""
    if requested is None or requested == settings.dispatch_mode:
        return settings.dispatch_mode
    if not settings.clients_choose_mode:
        raise InvalidRegistration(
            "The dispatch mode is set by the operator.",
            {"mode": f"Leave the mode out: this service uses {settings.dispatch_mode}."},
        )
    allowed = (*DISPATCH_MODES, BASELINE_MODE) if settings.bench_modes else DISPATCH_MODES
    if requested not in allowed:
        raise InvalidRegistration(
            "Unknown dispatch mode.", {"mode": f"Use one of: {', '.join(allowed)}."}
        )
    return requested


def check_country(settings: Settings, registration: Registration) -> None:
    """Refuse a number from a country the operator does not send SMS to (any by default)."""
    allowed = settings.sms_allowed_countries
    if not allowed:
        return
    region = phonenumbers.region_code_for_number(phonenumbers.parse(registration.phone))
    if region not in allowed:
        raise InvalidRegistration(
            "Some fields are missing or invalid.",
            {
                "phone": f"We cannot send text messages to numbers from this country ({region}). "
                f"Use a mobile number from: {', '.join(allowed)}."
            },
        )


def describe_user(user: User) -> dict[str, Any]:
    """The public view of a user and its notifications (API and status page)."""
    return {
        "id": user.id,
        "name": user.name,
        "email": user.email,
        "phone": user.phone,
        "verified": user.verified,
        "email_verified": user.email_verified_at is not None,
        "phone_verified": user.phone_verified_at is not None,
        "created_at": user.created_at.isoformat(),
        "notifications": [
            {
                "id": n.id,
                "channel": n.channel,
                "status": n.status,
                "attempts": n.attempts,
                "last_error": n.last_error,
                "sent_at": n.sent_at.isoformat() if n.sent_at else None,
            }
            for n in user.notifications
        ],
    }
