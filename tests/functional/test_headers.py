"""Security headers on every kind of response, and no inline code for the CSP to break."""

from __future__ import annotations

import webtest

from tests.functional.helpers import ADA, register, register_in_browser


def every_kind_of_page(testapp):
    """(name, response) for each page and API answer a client can get, good and bad."""
    status = register(testapp).headers["Location"]
    stranger = webtest.TestApp(testapp.app)
    register_in_browser(testapp, {**ADA, "email": "b@example.com", "phone": "+44 7911 123457"})
    csrf = testapp.get("/register").forms["register-form"]["csrf_token"].value
    return [
        ("register", testapp.get("/register")),
        ("register-invalid", testapp.post("/register", {"csrf_token": csrf}, status=400)),
        ("status", testapp.get("/status")),
        ("status-data", testapp.get("/status/data")),
        ("status-no-session", stranger.get("/status", status=303)),
        ("status-data-no-session", stranger.get("/status/data", status=404)),
        (
            "verify-phone-wrong",
            testapp.post("/status/verify-phone", {"csrf_token": csrf, "code": "1"}, status=400),
        ),
        ("verify-phone-no-csrf", testapp.post("/status/verify-phone", {}, status=400)),
        ("verify-email-invalid", testapp.get("/verify-email/forged", status=400)),
        ("static-js", testapp.get("/static/status.js")),
        ("static-css", testapp.get("/static/style.css")),
        ("api-status", testapp.get(status)),
        ("api-unknown", testapp.get("/api/status/nobody", status=404)),
        ("api-openapi", testapp.get("/api/openapi.json")),
        ("api-405", testapp.delete("/api/users", status=405)),
        ("no-such-page", testapp.get("/nothing-here", status=404)),
    ]


def test_security_headers_on_every_response(testapp):
    for name, response in every_kind_of_page(testapp):
        headers = response.headers
        csp = headers.get("Content-Security-Policy", "")
        assert "frame-ancestors 'none'" in csp, name
        assert "script-src 'self'" in csp and "unsafe-inline" not in csp, name
        assert headers.get("X-Content-Type-Options") == "nosniff", name
        assert headers.get("Referrer-Policy") == "strict-origin-when-cross-origin", name
        assert headers.get("X-Frame-Options") == "DENY", name


def test_pages_with_personal_data_are_not_cached(testapp):
    created = register(testapp)
    assert created.headers["Cache-Control"] == "no-store"  # it holds the status token
    assert testapp.get(created.headers["Location"]).headers["Cache-Control"] == "no-store"
    register_in_browser(testapp, {**ADA, "email": "b@example.com", "phone": "+44 7911 123457"})
    assert testapp.get("/status").headers["Cache-Control"] == "no-store"
    assert testapp.get("/status/data").headers["Cache-Control"] == "no-store"


def test_no_inline_script_or_style_anywhere(testapp):
    """The CSP forbids inline code, so a page that relied on it would silently break."""
    for name, response in every_kind_of_page(testapp):
        if "text/html" not in response.content_type:
            continue
        html = response.html
        assert all(script.get("src") for script in html.find_all("script")), name
        assert html.find("style") is None, name
        assert html.select("[style]") == [], name
        assert not any(
            attr.startswith("on") for tag in html.find_all(True) for attr in tag.attrs
        ), name


def test_405_from_the_api_keeps_its_allow_header(testapp):
    response = testapp.delete("/api/users", status=405)
    assert set(response.headers["Allow"].split(", ")) == {"OPTIONS", "POST"}
