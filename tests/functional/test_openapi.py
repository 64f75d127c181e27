"""The OpenAPI document is true: it names every API route and no other, it is a valid
OpenAPI 3.1 document, and every status each operation really answers is documented with a
body that validates against its schema (and every documented status is really produced)."""

from __future__ import annotations

import re
import tempfile
from collections import defaultdict
from typing import Any

import jsonschema_rs
import pytest
import schemathesis
import webtest

from app import create_app
from app.senders import RecordingSender

ADA = {"name": "Ada Lovelace", "email": "ada@example.com", "phone": "+44 7911 123456"}
IGNORED_METHODS = {"HEAD", "OPTIONS"}
# Documented so the document is honest, never produced on purpose.
NEVER_EXPECTED = {"500"}


@pytest.fixture
def document(testapp) -> dict[str, Any]:
    return testapp.get("/api/openapi.json").json


def rule_to_path(rule: str) -> str:
    return re.sub(r"<(?:[^:>]+:)?([^>]+)>", r"{\1}", rule)


def test_it_is_served_and_valid_openapi_3_1(document):
    assert document["openapi"].startswith("3.1")
    schemathesis.openapi.from_dict(document).validate()


def test_every_api_route_is_documented_and_nothing_else(app, document):
    routes = {
        (rule_to_path(rule.rule), method.lower())
        for rule in app.url_map.iter_rules()
        if rule.rule.startswith("/api/")
        for method in (rule.methods or set()) - IGNORED_METHODS
    }
    documented = {(path, method) for path, item in document["paths"].items() for method in item}
    assert routes == documented


def test_the_modes_follow_the_settings(settings, publisher):
    def modes(**overrides):
        application = create_app(settings.with_overrides(**overrides), publisher=publisher)
        doc = webtest.TestApp(application).get("/api/openapi.json").json
        (mode,) = doc["paths"]["/api/users"]["post"]["parameters"]
        return mode["schema"]["enum"]

    assert modes() == ["serial", "parallel", "queued"]
    assert "insert-only" in modes(bench_modes=True)


class Conformance:
    """Checks each response against the document and remembers which statuses it saw."""

    def __init__(self, document: dict[str, Any]) -> None:
        self.document = document
        self.seen: dict[tuple[str, str], set[str]] = defaultdict(set)

    def check(self, path: str, method: str, response: webtest.TestResponse) -> None:
        operation = self.document["paths"][path][method]
        status = str(response.status_int)
        assert status in operation["responses"], f"{method} {path} answered undocumented {status}"
        documented = operation["responses"][status]
        self.seen[(path, method)].add(status)
        for name, header in documented.get("headers", {}).items():
            if header.get("required"):
                assert name in response.headers, f"{method} {path} {status} lacks {name}"
        (media_type,) = documented["content"]
        assert response.content_type == media_type
        schema = {
            "components": self.document["components"],
            **documented["content"][media_type]["schema"],
        }
        errors = [
            error.message
            for error in jsonschema_rs.Draft202012Validator(schema).iter_errors(response.json)
        ]
        assert errors == [], f"{method} {path} {status}: {errors}"

    def unexercised(self) -> dict[str, set[str]]:
        missing = {}
        for path, item in self.document["paths"].items():
            for method, operation in item.items():
                left = set(operation["responses"]) - self.seen[(path, method)] - NEVER_EXPECTED
                if left:
                    missing[f"{method} {path}"] = left
        return missing


def test_every_response_matches_the_document_and_every_status_happens(
    settings, publisher, sessions
):
    from datetime import timedelta

    from sqlalchemy import update

    from app.models import User, utcnow

    sms = RecordingSender()
    application = create_app(
        settings.with_overrides(
            rate_limit_registrations="6/minute",
            rate_limit_verifications="20/minute",
            resend_max=1,
            resend_cooldown_seconds=0,
        ),
        publisher=publisher,
        email_sender=RecordingSender(),
        sms_sender=sms,
    )
    api = webtest.TestApp(application, extra_environ={"REMOTE_ADDR": "203.0.113.7"})
    doc = api.get("/api/openapi.json")
    conform = Conformance(doc.json)
    conform.check("/api/openapi.json", "get", doc)

    create = "/api/users"

    def post_user(payload, status, **kwargs):
        response = api.post_json(create + "?mode=serial", payload, status=status, **kwargs)
        conform.check(create, "post", response)
        return response

    created = post_user(ADA, 201).json
    ada = {**created["user"], "token": created["status_token"]}
    code = re.search(r"code is (\d{6})", sms.sent[-1].body).group(1)
    created = post_user({**ADA, "email": "grace@example.com", "phone": "+16502530000"}, 201).json
    grace = {**created["user"], "token": created["status_token"]}
    post_user({"name": ""}, 400)
    post_user(ADA, 409)
    post_user({**ADA, "name": "x" * 20_000}, 413)
    response = api.post(create, "name=Ada", status=415)
    conform.check(create, "post", response)
    post_user(ADA, 429)

    one = "/api/status/{token}"
    conform.check(one, "get", api.get(f"/api/status/{ada['token']}"))
    conform.check(one, "get", api.get("/api/status/nobody", status=404))

    verify = "/api/status/{token}/verify-phone"

    def post_code(token, body, status):
        response = api.post_json(f"/api/status/{token}/verify-phone", body, status=status)
        conform.check(verify, "post", response)
        return response

    post_code(ada["token"], {"code": "12"}, 400)
    post_code("nobody", {"code": "123456"}, 404)
    post_code(ada["token"], {"code": "9" * 20_000}, 413)
    conform.check(
        verify, "post", api.post(f"/api/status/{ada['token']}/verify-phone", "x", status=415)
    )
    post_code(ada["token"], {"code": code}, 200)
    post_code(ada["token"], {"code": code}, 409)
    with sessions() as session:
        session.execute(
            update(User)
            .where(User.id == grace["id"])
            .values(sms_code_expires_at=utcnow() - timedelta(seconds=1))
        )
        session.commit()
    post_code(grace["token"], {"code": "123456"}, 410)

    again = "/api/status/{token}/resend"

    def post_resend(token, body, status):
        response = api.post_json(f"/api/status/{token}/resend", body, status=status)
        conform.check(again, "post", response)
        return response

    post_resend(grace["token"], {"channel": "email"}, 202)
    post_resend(grace["token"], {"channel": "sms"}, 410)
    post_resend(grace["token"], {"channel": "fax"}, 400)
    post_resend("nobody", {"channel": "sms"}, 404)
    post_resend(ada["token"], {"channel": "sms"}, 409)
    post_resend(ada["token"], {"channel": "e" * 20_000}, 413)
    conform.check(again, "post", api.post(f"/api/status/{ada['token']}/resend", "x", status=415))
    for _ in range(12):
        last = api.post_json(
            f"/api/status/{grace['token']}/verify-phone", {"code": "123456"}, expect_errors=True
        )
    conform.check(verify, "post", last)
    assert last.status_int == 429
    conform.check(
        again, "post", api.post_json(f"/api/status/{ada['token']}/resend", {}, status=429)
    )

    # 503: a writer holds SQLite's lock past the busy timeout, or the database is unreachable.
    import sqlite3

    locked = webtest.TestApp(
        create_app(
            settings.with_overrides(database_busy_timeout=0.1, rate_limit_enabled=False),
            publisher=publisher,
            email_sender=RecordingSender(),
            sms_sender=sms,
        )
    )
    # A user with a live code, registered before the lock is taken.
    kay = locked.post_json(
        create, {**ADA, "email": "kay@example.com", "phone": "+16502530001"}, status=201
    ).json["status_token"]
    holder = sqlite3.connect(settings.database_url.removeprefix("sqlite:///"))
    holder.execute("BEGIN IMMEDIATE")
    try:
        lin = {**ADA, "email": "lin@example.com", "phone": "+16502530002"}
        conform.check(create, "post", locked.post_json(create, lin, status=503))
        conform.check(
            verify,
            "post",
            locked.post_json(f"/api/status/{kay}/verify-phone", {"code": "123456"}, status=503),
        )
        conform.check(
            again,
            "post",
            locked.post_json(f"/api/status/{kay}/resend", {"channel": "sms"}, status=503),
        )
    finally:
        holder.rollback()
        holder.close()
    unreachable_dir = tempfile.mkdtemp()
    unreachable = webtest.TestApp(
        create_app(
            settings.with_overrides(database_url=f"sqlite:///{unreachable_dir}"),
            publisher=publisher,
            email_sender=RecordingSender(),
            sms_sender=sms,
        )
    )
    conform.check(one, "get", unreachable.get(f"/api/status/{ada['token']}", status=503))

    assert conform.unexercised() == {}
