"""Item 6 of issue 10: the user id is not a bearer credential.

A random status token (stored hashed) opens the API status; the status page is bound to the
browser session; the primary key appears in no link, and not in the email token.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re

import webtest
from sqlalchemy import select

from app.models import User
from tests.functional.helpers import HOME

ADA = {"name": "Ada Lovelace", "email": "ada@example.com", "phone": "+44 7911 123456"}


def register(testapp):
    return testapp.post_json("/api/users?mode=serial", ADA, status=201)


def test_the_user_id_opens_nothing(testapp):
    user_id = register(testapp).json["user"]["id"]
    testapp.get(f"/api/users/{user_id}", status=404)
    testapp.get(f"/users/{user_id}", status=404)


def test_the_status_token_opens_the_status_and_is_stored_hashed(testapp, sessions):
    created = register(testapp)
    token = created.json["status_token"]
    assert len(token) >= 32
    user_id = created.json["user"]["id"]
    assert user_id not in created.headers["Location"]
    status = testapp.get(created.headers["Location"], status=200)
    assert status.json["user"]["email"] == "ada@example.com"
    assert status.headers["Cache-Control"] == "no-store"
    testapp.get("/api/status/" + "A" * len(token), status=404)
    with sessions() as session:
        stored = session.execute(select(User.status_token_hash)).scalar_one()
    assert stored != token and stored == hashlib.sha256(token.encode()).hexdigest()


def test_the_id_cannot_burn_the_code_attempts(testapp, sessions):
    user_id = register(testapp).json["user"]["id"]
    for _ in range(6):
        testapp.post_json(f"/api/users/{user_id}/verify-phone", {"code": "000000"}, status=404)
    with sessions() as session:
        assert session.execute(select(User.sms_code_attempts)).scalar_one() == 0


def test_the_token_verifies_the_phone(testapp, sms_sender):
    created = register(testapp)
    code = re.search(r"\b(\d{6})\b", sms_sender.sent[0].body).group(1)
    url = created.headers["Location"] + "/verify-phone"
    verified = testapp.post_json(url, {"code": code}, status=200)
    assert verified.json["user"]["phone_verified"] is True


def test_the_email_token_carries_no_readable_id(testapp, email_sender):
    user_id = register(testapp).json["user"]["id"]
    token = re.search(r"/verify-email/(\S+)", email_sender.sent[0].text).group(1)
    payload = token.lstrip(".").split(".")[0]
    decoded = base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))
    try:
        import zlib

        decoded = zlib.decompress(decoded)
    except zlib.error:
        pass
    assert user_id not in decoded.decode(errors="replace")
    assert user_id not in json.dumps(token)


def test_the_status_page_belongs_to_the_browser_that_registered(app, testapp):
    form = testapp.get("/register").forms["register-form"]
    for field, value in ADA.items():
        form[field] = value
    form["mode"] = "serial"
    redirect = form.submit(status=303)
    location = redirect.headers["Location"]
    page = redirect.follow()
    assert "ada@example.com" in page.text
    user_id = re.search(r"[0-9a-f]{32}", page.text)
    assert user_id is None or user_id.group(0) not in location
    # Another browser (no session cookie) at the same address sees no one's details.
    stranger = webtest.TestApp(app, extra_environ=dict(HOME))
    other = stranger.get(location, expect_errors=True)
    assert "ada@example.com" not in other.text


def test_no_page_shows_the_primary_key(testapp, sessions, email_sender):
    form = testapp.get("/register").forms["register-form"]
    for field, value in ADA.items():
        form[field] = value
    form["mode"] = "serial"
    page = form.submit().follow()
    with sessions() as session:
        user_id = session.execute(select(User.id)).scalar_one()
    assert user_id not in page.text
    link = re.search(r"http://testserver(/verify-email/\S+)", email_sender.sent[0].text).group(1)
    testapp.get(link).forms["verify-email-form"].submit()
    used = testapp.get(link, status=409)
    assert user_id not in used.text
