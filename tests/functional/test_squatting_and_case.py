"""Item 8 of issue 10: unverified registrations expire, and an address is one address whatever
its letter case."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import insert, select, update
from sqlalchemy.exc import IntegrityError

from app.models import Notification, User, utcnow

ADA = {"name": "Ada Lovelace", "email": "Ada@example.org", "phone": "+44 7911 123456"}


def register(testapp, payload, status=201):
    return testapp.post_json("/api/users?mode=queued", payload, status=status)


def age_everyone(sessions, hours, **values):
    with sessions() as session:
        session.execute(update(User).values(created_at=utcnow() - timedelta(hours=hours), **values))
        session.commit()


def test_an_address_in_other_letters_is_the_same_address(testapp):
    register(testapp, ADA)
    other_phone = {**ADA, "email": "ada@EXAMPLE.org", "phone": "+44 7911 123457"}
    response = register(testapp, other_phone, status=409)
    assert response.json["fields"] == {"email": "This email address is already registered."}
    register(testapp, {**other_phone, "email": "ADA@example.org"}, status=409)


def test_the_database_refuses_two_folded_keys_alike(sessions, testapp):
    register(testapp, ADA)
    with sessions() as session:
        row = session.execute(select(User)).scalar_one()
        with pytest.raises(IntegrityError):
            session.execute(
                insert(User).values(
                    id="f" * 32,
                    name="Ada",
                    email="ADA@EXAMPLE.ORG",
                    email_key=row.email_key,
                    phone="+447911123499",
                    created_at=utcnow(),
                    sms_code_attempts=0,
                )
            )


def test_an_expired_unverified_registration_is_replaced(testapp, sessions):
    old = register(testapp, ADA).json["user"]
    age_everyone(sessions, hours=49)
    new = register(testapp, {**ADA, "email": "ada@example.org"}).json["user"]
    assert new["id"] != old["id"]
    with sessions() as session:
        assert session.get(User, old["id"]) is None
        # The old user's outbox rows went with it; the new ones are there.
        users_of_rows = set(session.scalars(select(Notification.user_id)))
        assert users_of_rows == {new["id"]}


def test_the_phone_of_an_expired_registration_is_free_again(testapp, sessions):
    register(testapp, ADA)
    age_everyone(sessions, hours=49)
    register(testapp, {**ADA, "email": "someone-else@example.org"})


def test_a_recent_unverified_registration_still_holds_its_address(testapp, sessions):
    register(testapp, ADA)
    age_everyone(sessions, hours=47)
    register(testapp, ADA, status=409)


def test_a_verified_registration_never_expires(testapp, sessions):
    register(testapp, ADA)
    age_everyone(sessions, hours=24 * 365, email_verified_at=utcnow(), phone_verified_at=utcnow())
    register(testapp, ADA, status=409)


def test_the_expiry_is_a_setting(settings, publisher):
    from tests.functional.helpers import make_testapp

    testapp = make_testapp(settings, publisher, unverified_expiry_seconds=3600)
    register(testapp, ADA)
    with make_sessions(settings) as sessions:
        age_everyone(sessions, hours=2)
    register(testapp, ADA)


class make_sessions:
    def __init__(self, settings):
        from app.db import make_engine, make_session_factory

        self.engine = make_engine(settings.database_url)
        self.factory = make_session_factory(self.engine)

    def __enter__(self):
        return self.factory

    def __exit__(self, *exc):
        self.engine.dispose()
