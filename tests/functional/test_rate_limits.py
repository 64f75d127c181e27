"""Rate limits through the app: 429 with Retry-After, shared by the API, the form and every
worker, counted per client address. Parsing and counting alone: tests/unit/test_ratelimit.py."""

from __future__ import annotations

import pytest

from app.config import ConfigError
from tests.functional.helpers import ADA, HOME, make_testapp, register, register_in_browser


def test_registrations_over_the_limit_get_429_with_retry_after(settings, publisher):
    testapp = make_testapp(settings, publisher, rate_limit_registrations="3/minute")
    register(testapp)
    # Refused attempts count too: the limit is on attempts, not on successes.
    register(testapp, {"name": ""}, status=400)
    register(testapp, ADA, status=409)
    response = register(testapp, {**ADA, "email": "b@example.com"}, status=429)
    assert response.json["error"] == "too_many_requests"
    assert response.json["fields"] == {}
    assert 1 <= int(response.headers["Retry-After"]) <= 60
    # Another address is counted on its own.
    other = {"REMOTE_ADDR": "198.51.100.9"}
    testapp.post_json(
        "/api/users?mode=serial",
        {**ADA, "email": "c@example.com", "phone": "+16502530000"},
        extra_environ=other,
        status=201,
    )


def test_the_form_and_the_api_share_the_registration_limit(settings, publisher):
    testapp = make_testapp(settings, publisher, rate_limit_registrations="2/minute")
    register(testapp)
    form = testapp.get("/register").forms["register-form"]  # GETs are not counted
    register(testapp, {"name": ""}, status=400)
    form["name"] = "Grace"
    page = form.submit(status=429)
    assert "Too many attempts" in page.html.h1.text
    assert int(page.headers["Retry-After"]) >= 1
    assert "text/html" in page.content_type


def test_verification_attempts_are_limited_across_link_form_and_api(settings, publisher):
    testapp = make_testapp(settings, publisher, rate_limit_verifications="3/minute")
    verify_api = register(testapp).headers["Location"] + "/verify-phone"
    register_in_browser(testapp, {**ADA, "email": "b@example.com", "phone": "+44 7911 123457"})
    testapp.get("/verify-email/forged", status=400)
    testapp.post_json(verify_api, {"code": "000000"}, status=400)
    csrf = testapp.get("/status").forms["verify-phone-form"]["csrf_token"].value
    testapp.post("/status/verify-phone", {"csrf_token": csrf, "code": "1"}, status=400)
    api = testapp.post_json(verify_api, {"code": "000000"}, status=429)
    assert api.json["error"] == "too_many_requests" and "Retry-After" in api.headers
    assert "Retry-After" in testapp.get("/verify-email/forged", status=429).headers
    page = testapp.post("/status/verify-phone", {"csrf_token": csrf, "code": "1"}, status=429)
    assert "Retry-After" in page.headers


def test_the_limit_is_shared_by_every_worker(settings, publisher):
    """Two apps on one database, as two gunicorn workers are: one count between them."""
    first = make_testapp(settings, publisher, rate_limit_registrations="2/minute")
    second = make_testapp(settings, publisher, rate_limit_registrations="2/minute")
    register(first, {"name": ""}, status=400)
    register(second, {"name": ""}, status=400)
    register(first, {"name": ""}, status=429)
    register(second, {"name": ""}, status=429)


def test_forwarded_for_is_ignored_unless_a_proxy_is_trusted(settings, publisher):
    direct = make_testapp(settings, publisher, rate_limit_registrations="1/minute")
    spoofed = {**HOME, "HTTP_X_FORWARDED_FOR": "192.0.2.1"}
    register(direct, {"name": ""}, status=400)
    direct.post_json("/api/users", {"name": ""}, extra_environ=spoofed, status=429)

    proxied = make_testapp(
        settings, publisher, rate_limit_registrations="1/minute", rate_limit_trusted_proxies=1
    )
    for client in ("192.0.2.1", "192.0.2.2"):
        proxied.post_json(
            "/api/users",
            {"name": ""},
            status=400,
            extra_environ={**HOME, "HTTP_X_FORWARDED_FOR": f"10.9.9.9, {client}"},
        )


def test_limits_can_be_turned_off(settings, publisher):
    testapp = make_testapp(
        settings, publisher, rate_limit_enabled=False, rate_limit_registrations="1/minute"
    )
    for _ in range(5):
        register(testapp, {"name": ""}, status=400)


def test_limits_turned_off_look_at_no_client_address(settings, publisher, monkeypatch):
    # Off means no work per request: not even reading who the client is.
    def looked_at(*_args: object) -> str:
        raise AssertionError("the client address was worked out with the limits off")

    monkeypatch.setattr("app.ratelimit.client_address", looked_at)
    testapp = make_testapp(settings, publisher, rate_limit_enabled=False)
    register(testapp, {"name": ""}, status=400)


def test_a_malformed_limit_refuses_to_start(settings, publisher):
    with pytest.raises(ConfigError, match="RATE_LIMIT_REGISTRATIONS"):
        make_testapp(settings, publisher, rate_limit_registrations="lots")
