"""The JSON API through WebTest, with the in-memory publisher and recording senders."""

import pytest
from sqlalchemy import select

from app.events import REQUEST_HOLDER
from app.messaging import BrokerUnavailable
from app.models import Event, Notification
from app.servertiming import parse_server_timing

ADA = {"name": "Ada Lovelace", "email": "ada@example.com", "phone": "+44 7911 123456"}


def register(testapp, payload=None, mode=None, status=201):
    url = "/api/users" + (f"?mode={mode}" if mode else "")
    return testapp.post_json(url, payload or ADA, status=status)


def server_timing_steps(response):
    return list(parse_server_timing(response.headers["Server-Timing"]))


def test_queued_mode_publishes_one_event_for_both_channels_and_answers(
    testapp, publisher, email_sender, sessions
):
    response = register(testapp)
    user = response.json["user"]
    assert response.json["mode"] == "queued"
    assert user["phone"] == "+447911123456"
    assert user["verified"] is False
    assert response.headers["Location"].endswith(f"/api/status/{response.json['status_token']}")
    assert server_timing_steps(response) == ["db", "publish"]
    assert [n["status"] for n in user["notifications"]] == ["queued", "queued"]
    # One message, the registration's event; no job per channel.
    assert [event.type for event in publisher.events] == ["user.registered"]
    assert publisher.published == []
    assert email_sender.sent == []
    with sessions() as session:
        event = session.get(Event, publisher.events[0].id)
        rows = session.scalars(select(Notification).where(Notification.user_id == user["id"]))
        # Published by the request itself (the relay never held it), and its rows queued.
        assert (event.status, event.claimed_by) == ("published", REQUEST_HOLDER)
        assert {(row.event_id, row.status) for row in rows} == {(event.id, "queued")}


@pytest.mark.parametrize("mode", ["serial", "parallel"])
def test_inline_modes_send_before_answering(
    testapp, publisher, email_sender, sms_sender, sessions, mode
):
    response = register(testapp, mode=mode)
    assert response.json["mode"] == mode
    assert server_timing_steps(response) == ["db", "email", "sms"]
    assert [n["status"] for n in response.json["user"]["notifications"]] == ["sent", "sent"]
    assert [job.to for job in email_sender.sent] == ["ada@example.com"]
    assert [job.to for job in sms_sender.sent] == ["+447911123456"]
    assert publisher.published == [] and publisher.events == []
    with sessions() as session:
        [event] = session.scalars(select(Event).where(Event.type == "user.registered")).all()
    # Held while the request sent, released with the record: the relay publishes it next.
    assert (event.type, event.status, event.claimed_by) == ("user.registered", "pending", None)


def test_email_carries_a_verification_link_and_sms_a_code(testapp, email_sender, sms_sender):
    register(testapp, mode="serial")
    assert "http://testserver/verify-email/" in email_sender.sent[0].text
    body = sms_sender.sent[0].body
    assert any(word.rstrip(".").isdigit() and len(word.rstrip(".")) == 6 for word in body.split())


def test_default_mode_comes_from_settings(settings, publisher, email_sender, sms_sender):
    import webtest

    from app import create_app

    app = create_app(
        settings.with_overrides(dispatch_mode="serial"),
        publisher=publisher,
        email_sender=email_sender,
        sms_sender=sms_sender,
    )
    response = register(webtest.TestApp(app))  # no ?mode=
    assert response.json["mode"] == "serial"
    assert [job.to for job in email_sender.sent] == ["ada@example.com"]


def test_get_user_shows_notifications(testapp):
    location = register(testapp).headers["Location"]
    user = testapp.get(location).json["user"]
    assert user["email"] == "ada@example.com"
    assert {n["channel"]: n["attempts"] for n in user["notifications"]} == {"email": 0, "sms": 0}


def test_broker_down_still_registers_and_leaves_jobs_pending(testapp, publisher):
    publisher.fail_with = BrokerUnavailable("connection refused")
    response = register(testapp)
    assert [n["status"] for n in response.json["user"]["notifications"]] == ["pending", "pending"]
    assert server_timing_steps(response) == ["db", "publish"]


def test_invalid_fields_are_400_with_every_field_named(testapp):
    response = register(testapp, {"name": "", "email": "nope", "phone": "123"}, status=400)
    assert response.json["error"] == "invalid"
    assert set(response.json["fields"]) == {"name", "email", "phone"}


def test_unknown_mode_is_400(testapp):
    response = register(testapp, mode="turbo", status=400)
    assert "mode" in response.json["fields"]


@pytest.mark.parametrize(
    ("duplicate", "field"),
    [({"phone": "+16502530000"}, "email"), ({"email": "other@example.com"}, "phone")],
)
def test_duplicate_email_or_phone_is_409(testapp, duplicate, field):
    register(testapp)
    response = register(testapp, {**ADA, **duplicate}, status=409)
    assert response.json["error"] == "already_registered"
    assert list(response.json["fields"]) == [field]


def test_duplicate_check_uses_the_normalised_values(testapp):
    register(testapp)
    register(testapp, {**ADA, "email": "ada@EXAMPLE.com", "phone": "+447911123456"}, status=409)


def test_not_json_is_415(testapp):
    response = testapp.post("/api/users", "name=Ada", status=415)
    assert response.json["error"] == "unsupported_media_type"


@pytest.mark.parametrize("body", ["{broken", "[1, 2]", '"text"', "null"])
def test_bad_json_is_400(testapp, body):
    response = testapp.post("/api/users", body, content_type="application/json", status=400)
    assert response.json["error"] == "invalid_json"


def test_body_too_large_is_413(testapp):
    payload = {**ADA, "name": "x" * 20_000}
    response = testapp.post_json("/api/users", payload, status=413)
    assert response.json["error"] == "request_entity_too_large"


def test_unknown_user_is_404(testapp):
    assert testapp.get("/api/status/nobody", status=404).json["error"] == "not_found"


def test_unknown_api_path_and_method_are_json(testapp):
    assert testapp.get("/api/nothing-here", status=404).json["error"] == "not_found"
    assert testapp.delete("/api/users", status=405).json["error"] == "method_not_allowed"


def test_health_and_metrics(testapp):
    assert testapp.get("/healthz").json == {"status": "ok"}
    assert testapp.get("/readyz").json["database"] == "up"
    register(testapp)
    metrics = testapp.get("/metrics").text
    assert 'offload_registrations_total{mode="queued",outcome="created"}' in metrics


def test_insert_only_baseline_needs_bench_modes(testapp):
    register(testapp, mode="insert-only", status=400)


def test_insert_only_baseline_writes_and_sends_nothing(
    settings, publisher, email_sender, sms_sender
):
    import webtest

    from app import create_app

    app = create_app(
        settings.with_overrides(bench_modes=True),
        publisher=publisher,
        email_sender=email_sender,
        sms_sender=sms_sender,
    )
    response = register(webtest.TestApp(app), mode="insert-only")
    assert [n["status"] for n in response.json["user"]["notifications"]] == ["skipped", "skipped"]
    assert server_timing_steps(response) == ["db"]
    assert publisher.published == [] and email_sender.sent == [] and sms_sender.sent == []


def test_timestamps_read_back_from_the_database_keep_their_time_zone(testapp):
    from datetime import datetime

    location = register(testapp, mode="serial").headers["Location"]
    user = testapp.get(location).json["user"]  # a fresh read, not the objects just written
    assert datetime.fromisoformat(user["created_at"]).utcoffset().total_seconds() == 0
    sent_at = user["notifications"][0]["sent_at"]
    assert datetime.fromisoformat(sent_at).utcoffset().total_seconds() == 0


def test_a_locked_database_is_503_with_retry_after_not_500(
    settings, publisher, email_sender, sms_sender, database_url
):
    import sqlite3

    import webtest

    from app import create_app

    app = create_app(
        settings.with_overrides(database_busy_timeout=0.2),
        publisher=publisher,
        email_sender=email_sender,
        sms_sender=sms_sender,
    )
    holder = sqlite3.connect(database_url.removeprefix("sqlite:///"))
    holder.execute("BEGIN IMMEDIATE")  # another process holds SQLite's one write lock
    try:
        response = webtest.TestApp(app).post_json("/api/users", ADA, status=503)
    finally:
        holder.rollback()
        holder.close()
    assert response.json["error"] == "service_unavailable"
    assert response.headers["Retry-After"] == "1"
    register(webtest.TestApp(app))  # the lock is gone: the same registration goes through


def publish_failures(testapp):
    for line in testapp.get("/metrics").text.splitlines():
        if line.startswith("offload_publish_failures_total "):
            return float(line.split()[1])
    raise AssertionError("offload_publish_failures_total is not exported")


def test_a_failed_publish_is_counted(testapp, publisher):
    before = publish_failures(testapp)
    register(testapp)  # published: not a failure
    assert publish_failures(testapp) == before
    publisher.fail_with = BrokerUnavailable("connection refused")
    register(testapp, {**ADA, "email": "bob@example.com", "phone": "+16502530001"})
    assert publish_failures(testapp) == before + 1
