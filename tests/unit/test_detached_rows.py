"""A registration's rows are written with Core and answered with as detached ORM objects built
without the ORM's constructor (app/db.py `detached`): they read like loaded rows, take changes
like any object, and work in a process that has not queried yet."""

from __future__ import annotations

from sqlalchemy import inspect
from sqlalchemy.orm.attributes import set_committed_value

from app.db import detached
from app.models import Notification, User, utcnow
from tests.fresh_process import run_python


def test_a_detached_row_reads_as_loaded_and_records_a_change():
    now = utcnow()
    user = detached(User, id="u1", name="Ann", email="ann@example.com", created_at=now)
    notification = detached(Notification, id="n1", user_id="u1", channel="sms", status="pending")
    set_committed_value(user, "notifications", [notification])
    assert (user.id, user.name, user.created_at) == ("u1", "Ann", now)
    assert user.phone is None and user.email_verified_at is None  # never given: as a new object
    assert user.notifications == [notification]
    state = inspect(notification)
    assert state.session is None and not state.modified
    notification.status = "sent"  # the inline record changes the rows it answers with
    assert notification.status == "sent" and state.modified


def test_a_detached_row_works_before_the_mappers_are_configured():
    # A fresh process: the web's first request may be a registration, before any query has
    # configured the mappers (a relationship would not be readable yet).
    program = (
        "from app.db import detached\n"
        "from app.models import Notification, User\n"
        "user = detached(User, id='u1', name='Ann')\n"
        "user.notifications = [detached(Notification, id='n1', channel='sms')]\n"
        "print(user.name, user.phone, [n.channel for n in user.notifications])\n"
    )
    result = run_python(program)
    assert result.stdout.split() == ["Ann", "None", "['sms']"]
