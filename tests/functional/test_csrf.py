"""CSRF: every form carries a token, a post without it is refused, and the session cookie that
holds it is out of scripts' and other sites' reach."""

from __future__ import annotations

import pytest

from tests.functional.helpers import ADA, make_testapp, register_in_browser


def test_every_form_carries_a_csrf_token(testapp):
    register_in_browser(testapp)
    forms = {}
    for url in ("/register", "/status"):
        for form in testapp.get(url).html.find_all("form"):
            forms[form["id"]] = form
    assert set(forms) == {
        "register-form",
        "verify-phone-form",
        "resend-email-form",
        "resend-sms-form",
    }
    for form_id, form in forms.items():
        assert form["method"].lower() == "post", form_id
        token = form.select_one('input[type=hidden][name="csrf_token"]')
        assert token is not None and token["value"], form_id


@pytest.mark.parametrize(
    "path", ["/register", "/status/verify-phone", "/status/resend/sms", "/status/resend/email"]
)
def test_posting_a_form_without_its_token_is_refused(testapp, path):
    register_in_browser(testapp)
    page = testapp.post(path, {"code": "123456", **ADA}, status=400)
    assert "did not come from this site" in page.text


def test_session_cookie_is_httponly_and_samesite(testapp):
    testapp.get("/register")
    cookie = next(c for c in testapp.cookiejar if c.name == "session")
    assert cookie.has_nonstandard_attr("HttpOnly")
    assert cookie.get_nonstandard_attr("SameSite") == "Lax"
    assert not cookie.secure  # http://testserver; secure once BASE_URL is https


def test_session_cookie_is_secure_behind_https(settings, publisher):
    testapp = make_testapp(settings, publisher, base_url="https://offload.example")
    testapp.get("/register", extra_environ={"wsgi.url_scheme": "https"})
    cookie = next(c for c in testapp.cookiejar if c.name == "session")
    assert cookie.secure
