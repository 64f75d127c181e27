"""Item 7 of issue 10: a new email link or SMS code, from the API and from the status page,
with a cooldown and a per-user cap. A resend is a new notification row through the same outbox,
queue and ledger."""

from __future__ import annotations

import re

from sqlalchemy import select

from app.extension import offload
from app.models import Notification
from tests.functional.helpers import ADA, make_testapp, register_in_browser


def code_of(sms):
    return re.search(r"code is (\d{6})", sms.body).group(1)


def wrong(code):
    return f"{(int(code) + 1) % 1_000_000:06d}"


def registered(testapp):
    created = testapp.post_json("/api/users?mode=serial", ADA, status=201)
    return created.headers["Location"]


def test_a_new_code_works_after_the_attempts_ran_out(settings, publisher):
    testapp = make_testapp(settings, publisher, resend_cooldown_seconds=0, dispatch_mode="serial")
    sms_sender = offload(testapp.app).dispatcher.sms_sender
    status = registered(testapp)
    first = code_of(sms_sender.sent[-1])
    for _ in range(5):
        testapp.post_json(f"{status}/verify-phone", {"code": wrong(first)}, status=400)
    testapp.post_json(f"{status}/verify-phone", {"code": first}, status=410)
    resent = testapp.post_json(f"{status}/resend", {"channel": "sms"}, status=202)
    sms_rows = [n for n in resent.json["user"]["notifications"] if n["channel"] == "sms"]
    assert len(sms_rows) == 2 and sms_rows[0]["id"] != sms_rows[1]["id"]
    second = code_of(sms_sender.sent[-1])
    assert len(sms_sender.sent) == 2
    verified = testapp.post_json(f"{status}/verify-phone", {"code": second}, status=200)
    assert verified.json["user"]["phone_verified"] is True


def test_a_new_link_goes_out_through_the_outbox_queue_and_ledger(testapp, publisher, sessions):
    status = testapp.post_json("/api/users?mode=queued", ADA, status=201).headers["Location"]
    testapp.post_json(f"{status}/resend", {"channel": "email"}, status=202)
    # The registration's email went with its event; the resend is a job of its own.
    [resent] = [job for job in publisher.published if job.kind == "email"]
    assert "/verify-email/" in resent.text
    with sessions() as session:
        rows = session.scalars(
            select(Notification)
            .where(Notification.channel == "email")
            .order_by(Notification.created_at)
        ).all()
    assert [row.event_id for row in rows] == [publisher.events[0].id, None]
    assert rows[1].id == resent.notification_id
    assert {row.status for row in rows} == {"queued"}


def test_a_second_resend_waits_out_the_cooldown(testapp):
    status = registered(testapp)
    testapp.post_json(f"{status}/resend", {"channel": "sms"}, status=202)
    refused = testapp.post_json(f"{status}/resend", {"channel": "email"}, status=429)
    assert refused.json["error"] == "resend_too_soon"
    assert int(refused.headers["Retry-After"]) >= 1


def test_resends_are_capped_per_user(settings, publisher):
    testapp = make_testapp(settings, publisher, resend_cooldown_seconds=0, resend_max=2)
    status = registered(testapp)
    for channel in ("sms", "email"):
        testapp.post_json(f"{status}/resend", {"channel": channel}, status=202)
    refused = testapp.post_json(f"{status}/resend", {"channel": "sms"}, status=410)
    assert refused.json["error"] == "too_many_resends"


def test_nothing_is_resent_once_verified_or_for_an_unknown_channel(testapp, email_sender):
    status = registered(testapp)
    testapp.post_json(f"{status}/resend", {"channel": "fax"}, status=400)
    link = re.search(r"http://testserver(/verify-email/\S+)", email_sender.sent[-1].text).group(1)
    testapp.get(link).forms["verify-email-form"].submit()
    refused = testapp.post_json(f"{status}/resend", {"channel": "email"}, status=409)
    assert refused.json["error"] == "already_verified"
    testapp.post_json("/api/status/nobody/resend", {"channel": "sms"}, status=404)


def test_the_status_page_asks_for_a_new_code(settings, publisher):
    testapp = make_testapp(settings, publisher, dispatch_mode="serial")
    sms_sender = offload(testapp.app).dispatcher.sms_sender
    register_in_browser(testapp)
    page = testapp.get("/status")
    done = page.forms["resend-sms-form"].submit().follow()
    assert "new code" in done.html.select_one(".notice").text
    assert len(sms_sender.sent) == 2
    again = done.forms["resend-email-form"].submit(status=429)
    assert "wait" in again.text.lower()
