"""List and release SMS held over a budget: `python -m services.held list|release`.

An SMS over one of the operator's budgets (SMS_BUDGET_GLOBAL, SMS_BUDGET_PER_COUNTRY,
SMS_BUDGET_PER_NUMBER; see app/smsbudget.py) is written `held` and waits. Releasing makes it
`pending` again, so the outbox relay publishes it on its next scan; since the code
it carried may have expired meanwhile, each released SMS gets a fresh code (valid
SMS_CODE_MAX_AGE from the release) and its user's attempts start again. A release is not
counted against the budgets: the operator has decided to pay for it.
"""

from __future__ import annotations

import argparse
import sys
from datetime import timedelta

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from app.config import Settings, load_settings_or_exit
from app.db import make_engine, make_session_factory
from app.jobs import job_from_dict, job_to_dict
from app.logs import mask_phone
from app.models import Notification, User, utcnow
from app.registration import sms_text
from app.smsbudget import HELD
from app.verification import hash_sms_code, make_sms_code


def held_sms(session: Session, limit: int) -> list[Notification]:
    return list(
        session.scalars(
            select(Notification)
            .where(Notification.status == HELD)
            .order_by(Notification.created_at)
            .limit(limit)
        )
    )


def release_held(session: Session, settings: Settings, *, limit: int) -> int:
    """Make up to `limit` held SMS pending again, each with a fresh code; return how many."""
    released = 0
    now = utcnow()
    for notification in held_sms(session, limit):
        code = make_sms_code()
        job = job_from_dict(notification.payload)
        session.execute(
            update(User)
            .where(User.id == notification.user_id, User.phone_verified_at.is_(None))
            .values(
                sms_code_hash=hash_sms_code(settings.secret_key, notification.user_id, code),
                sms_code_expires_at=now + timedelta(seconds=settings.sms_code_max_age),
                sms_code_attempts=0,
            )
            .execution_options(synchronize_session=False)
        )
        payload = {**job_to_dict(job), "body": sms_text(settings, code)}
        session.execute(
            update(Notification)
            .where(Notification.id == notification.id, Notification.status == HELD)
            .values(status="pending", last_error=None, payload=payload)
            .execution_options(synchronize_session=False)
        )
        released += 1
    session.commit()
    return released


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="List or release SMS held over a budget.")
    parser.add_argument("action", choices=["list", "release"])
    parser.add_argument("--limit", type=int, default=100, help="at most this many SMS")
    args = parser.parse_args(argv)
    settings = load_settings_or_exit()
    engine = make_engine(
        settings.database_url,
        busy_timeout=settings.database_busy_timeout,
        socket_timeout=settings.database_timeout,
    )
    try:
        with make_session_factory(engine)() as session:
            if args.action == "list":
                rows = held_sms(session, args.limit)
                print(f"{len(rows)} held SMS shown")
                for row in rows:
                    to = mask_phone(str(row.payload.get("to", "")))
                    print(f"  {row.created_at.isoformat()}  {row.id}  {to}  {row.last_error}")
            else:
                print(f"released {release_held(session, settings, limit=args.limit)} held SMS")
    finally:
        engine.dispose()
    return 0


if __name__ == "__main__":
    sys.exit(main())
