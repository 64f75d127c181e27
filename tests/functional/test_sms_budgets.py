"""Item 5 of issue 10: SMS pumping. The operator decides what costs money: SMS budgets (global,
per country calling code, per number), allowed countries, and whether clients pick the mode.

Over a budget the registration is still accepted; its SMS is `held` (visible, nothing lost)
until an operator releases it (`python -m services.held release`).
"""

from __future__ import annotations

import re
from datetime import timedelta

from sqlalchemy import select, update

from app.models import Notification, User, utcnow
from tests.functional.helpers import make_testapp

UK = "+44 7911 1234{:02d}"
US = "+1 650 253 00{:02d}"


def person(n, phone_format=UK):
    return {"name": f"P{n}", "email": f"p{n}@example.com", "phone": phone_format.format(n)}


def statuses(response):
    return {n["channel"]: n["status"] for n in response.json["user"]["notifications"]}


def post(testapp, payload, mode="queued", status=201):
    return testapp.post_json(f"/api/users?mode={mode}", payload, status=status)


def test_over_the_global_budget_the_sms_is_held_and_the_registration_accepted(
    settings, publisher, sessions
):
    testapp = make_testapp(settings, publisher, sms_budget_global="2/hour")
    for n in range(2):
        assert statuses(post(testapp, person(n))) == {"email": "queued", "sms": "queued"}
    third = post(testapp, person(2))
    assert statuses(third) == {"email": "queued", "sms": "held"}
    sms = next(n for n in third.json["user"]["notifications"] if n["channel"] == "sms")
    assert "budget" in sms["last_error"]
    # Every registration's event went out; the held row waits for its release, and the SMS
    # consumer leaves it alone when the event arrives (tests/unit/test_registration_event.py).
    assert [event.type for event in publisher.events] == ["user.registered"] * 3
    with sessions() as session:
        held = session.get(Notification, sms["id"])
        assert (held.status, held.event_id) == ("held", publisher.events[2].id)


def test_held_sms_are_not_sent_inline_either(settings, publisher):
    testapp = make_testapp(settings, publisher, sms_budget_global="1/hour")
    post(testapp, person(0), mode="serial")
    assert statuses(post(testapp, person(1), mode="serial")) == {"email": "sent", "sms": "held"}


def test_each_country_calling_code_has_its_own_budget(settings, publisher):
    testapp = make_testapp(settings, publisher, sms_budget_per_country="1/hour")
    post(testapp, person(0))
    assert statuses(post(testapp, person(1)))["sms"] == "held"  # a second +44 number
    assert statuses(post(testapp, person(2, US)))["sms"] == "queued"  # +1 has its own


def test_each_number_has_its_own_budget(settings, publisher, sessions):
    testapp = make_testapp(settings, publisher, sms_budget_per_number="1/day")
    post(testapp, person(0))
    with sessions() as session:  # the first registration expires unverified
        session.execute(update(User).values(created_at=utcnow() - timedelta(days=3)))
        session.commit()
    again = post(testapp, {**person(0), "email": "other@example.com"})
    assert statuses(again)["sms"] == "held"


def test_numbers_from_countries_not_allowed_are_refused_naming_the_field(settings, publisher):
    testapp = make_testapp(settings, publisher, sms_allowed_countries=("US", "CA"))
    refused = post(testapp, person(0), status=400)
    assert "phone" in refused.json["fields"]
    assert "US, CA" in refused.json["fields"]["phone"]
    post(testapp, person(1, US))


def test_countries_are_any_by_default(settings):
    assert settings.sms_allowed_countries == ()


def test_in_production_clients_cannot_choose_the_mode(settings, publisher):
    testapp = make_testapp(
        settings,
        publisher,
        environment="production",
        secret_key="p" * 40,
        dispatch_mode="queued",
    )
    refused = post(testapp, person(0), mode="serial", status=400)
    assert "mode" in refused.json["fields"]
    created = testapp.post_json("/api/users", person(1), status=201)
    assert created.json["mode"] == "queued"


def test_in_development_clients_may_choose_the_mode_unless_told_otherwise(settings, publisher):
    assert settings.clients_choose_mode
    post(make_testapp(settings, publisher), person(0), mode="serial")
    locked = make_testapp(settings, publisher, allow_client_mode=False)
    post(locked, person(1), mode="serial", status=400)


def test_the_status_page_says_the_sms_is_held(settings, publisher):
    testapp = make_testapp(settings, publisher, sms_budget_global="1/hour")
    post(testapp, person(0))
    form = testapp.get("/register").forms["register-form"]
    for field, value in person(1).items():
        form[field] = value
    page = form.submit().follow()
    assert "held" in page.text
    assert re.search(r"budget", page.text)


def test_an_operator_releases_held_sms_with_a_fresh_code(settings, publisher, sessions, capsys):
    from services.held import release_held

    testapp = make_testapp(settings, publisher, sms_budget_global="1/hour")
    post(testapp, person(0))
    post(testapp, person(1))
    with sessions() as session:
        held = session.scalars(select(Notification).where(Notification.status == "held")).all()
        assert len(held) == 1
        old_body = held[0].payload["body"]
    with sessions() as session:
        assert release_held(session, settings, limit=100) == 1
    with sessions() as session:
        row = session.get(Notification, held[0].id)
        assert row.status == "pending"  # the relay publishes it
        assert row.payload["body"] != old_body  # a fresh code, valid from now
