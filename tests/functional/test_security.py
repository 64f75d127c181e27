"""Security basics: headers, CSRF, no inline code, rate limits, secrets, and masked logs."""

from __future__ import annotations

import ast
import io
import json
import logging
import re

import pytest
import webtest
from sqlalchemy import func, select

from app import create_app
from app.config import DEFAULT_SECRET_KEY, ConfigError, Settings
from app.db import make_engine
from app.extension import offload
from app.logs import JsonFormatter
from app.models import RateLimitCounter
from app.ratelimit import Rate, RateLimiter, client_address
from app.senders import PermanentSendError, RecordingSender
from devstack import PROJECT_ROOT

ADA = {"name": "Ada Lovelace", "email": "ada@example.com", "phone": "+44 7911 123456"}
HOME = {"REMOTE_ADDR": "203.0.113.7"}


def make_testapp(settings, publisher, *, extra_environ=None, **overrides):
    application = create_app(
        settings.with_overrides(**overrides),
        publisher=publisher,
        email_sender=RecordingSender(),
        sms_sender=RecordingSender(),
    )
    return webtest.TestApp(application, extra_environ=extra_environ or dict(HOME))


def register(testapp, payload=None, status=201):
    return testapp.post_json("/api/users?mode=serial", payload or ADA, status=status)


# -- headers on every kind of response -----------------------------------------------------------


def every_kind_of_page(testapp):
    """(name, response) for each page and API answer a client can get, good and bad."""
    user = register(testapp).json["user"]
    uid = user["id"]
    csrf = testapp.get("/register").forms["register-form"]["csrf_token"].value
    return [
        ("register", testapp.get("/register")),
        ("register-invalid", testapp.post("/register", {"csrf_token": csrf}, status=400)),
        ("status", testapp.get(f"/users/{uid}")),
        ("status-unknown", testapp.get("/users/nobody", status=404)),
        (
            "verify-phone-wrong",
            testapp.post(
                f"/users/{uid}/verify-phone", {"csrf_token": csrf, "code": "1"}, status=400
            ),
        ),
        ("verify-phone-no-csrf", testapp.post(f"/users/{uid}/verify-phone", {}, status=400)),
        ("verify-email-invalid", testapp.get("/verify-email/forged", status=400)),
        ("static-js", testapp.get("/static/status.js")),
        ("static-css", testapp.get("/static/style.css")),
        ("api-user", testapp.get(f"/api/users/{uid}")),
        ("api-unknown", testapp.get("/api/users/nobody", status=404)),
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
    uid = register(testapp).json["user"]["id"]
    assert testapp.get(f"/users/{uid}").headers["Cache-Control"] == "no-store"
    assert testapp.get(f"/api/users/{uid}").headers["Cache-Control"] == "no-store"


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


# -- CSRF ------------------------------------------------------------------------------------------


def test_every_form_carries_a_csrf_token(testapp):
    uid = register(testapp).json["user"]["id"]
    forms = {}
    for url in ("/register", f"/users/{uid}"):
        for form in testapp.get(url).html.find_all("form"):
            forms[form["id"]] = form
    assert set(forms) == {"register-form", "verify-phone-form"}
    for form_id, form in forms.items():
        assert form["method"].lower() == "post", form_id
        token = form.select_one('input[type=hidden][name="csrf_token"]')
        assert token is not None and token["value"], form_id


@pytest.mark.parametrize("path", ["/register", "/users/{uid}/verify-phone"])
def test_posting_a_form_without_its_token_is_refused(testapp, path):
    uid = register(testapp).json["user"]["id"]
    page = testapp.post(path.format(uid=uid), {"code": "123456", **ADA}, status=400)
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


# -- rate limits -----------------------------------------------------------------------------------


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
    uid = register(testapp).json["user"]["id"]
    testapp.get("/verify-email/forged", status=400)
    testapp.post_json(f"/api/users/{uid}/verify-phone", {"code": "000000"}, status=400)
    csrf = testapp.get(f"/users/{uid}").forms["verify-phone-form"]["csrf_token"].value
    testapp.post(f"/users/{uid}/verify-phone", {"csrf_token": csrf, "code": "1"}, status=400)
    api = testapp.post_json(f"/api/users/{uid}/verify-phone", {"code": "000000"}, status=429)
    assert api.json["error"] == "too_many_requests" and "Retry-After" in api.headers
    assert "Retry-After" in testapp.get("/verify-email/forged", status=429).headers
    page = testapp.post(f"/users/{uid}/verify-phone", {"csrf_token": csrf, "code": "1"}, status=429)
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


def test_a_malformed_limit_refuses_to_start(settings, publisher):
    with pytest.raises(ConfigError, match="RATE_LIMIT_REGISTRATIONS"):
        make_testapp(settings, publisher, rate_limit_registrations="lots")


@pytest.mark.parametrize(
    ("text", "rate"),
    [
        ("10/minute", Rate(10, 60)),
        ("5/second", Rate(5, 1)),
        (" 100 / hours ", Rate(100, 3600)),
        ("1/day", Rate(1, 86400)),
    ],
)
def test_rates_are_read_from_settings(text, rate):
    assert Rate.parse(text) == rate


@pytest.mark.parametrize("text", ["", "10", "ten/minute", "0/minute", "-1/minute", "10/fortnight"])
def test_malformed_rates_are_refused(text):
    with pytest.raises(ConfigError):
        Rate.parse(text)


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_fixed_window_resets_and_says_when(database_url):
    engine = make_engine(database_url)
    clock = Clock(60 * 16_000 + 20.0)  # 20 s into a minute window
    limiter = RateLimiter(engine, {"r": Rate(2, 60)}, clock=clock)
    assert [limiter.hit("r", "a").allowed for _ in range(3)] == [True, True, False]
    assert limiter.hit("r", "a").retry_after == 40
    assert limiter.hit("r", "b").allowed
    clock.now += 40  # the next window
    decision = limiter.hit("r", "a")
    assert decision.allowed and decision.remaining == 1
    # The first hit of a new window swept the closed windows away.
    with engine.connect() as connection:
        rows = connection.execute(select(func.count()).select_from(RateLimitCounter)).scalar()
    assert rows == 1
    engine.dispose()


@pytest.mark.parametrize(
    ("remote", "forwarded", "proxies", "expected"),
    [
        ("203.0.113.7", None, 0, "203.0.113.7"),
        ("203.0.113.7", "192.0.2.1", 0, "203.0.113.7"),
        ("10.0.0.1", "192.0.2.1", 1, "192.0.2.1"),
        ("10.0.0.1", "6.6.6.6, 192.0.2.1, 10.0.0.2", 2, "192.0.2.1"),
        ("10.0.0.1", "192.0.2.1", 2, "10.0.0.1"),  # fewer hops than proxies: not trusted
        ("2001:db8:1:2:3:4:5:6", None, 0, "2001:db8:1:2::/64"),
        ("2001:db8:1:2:ffff::1", None, 0, "2001:db8:1:2::/64"),
        ("::ffff:192.0.2.1", None, 0, "192.0.2.1"),
        (None, None, 0, "unknown"),
        ("not an address", None, 0, "not an address"),
    ],
)
def test_client_address(remote, forwarded, proxies, expected):
    assert client_address(remote, forwarded, proxies) == expected


# -- secrets ---------------------------------------------------------------------------------------


def test_create_app_refuses_the_default_secret_key_in_production(database_url, publisher):
    settings = Settings(environment="production", database_url=database_url)
    assert settings.secret_key == DEFAULT_SECRET_KEY
    with pytest.raises(ConfigError, match="SECRET_KEY"):
        create_app(settings, publisher=publisher)


def test_production_starts_with_a_real_secret_key(database_url, publisher):
    settings = Settings(environment="production", database_url=database_url, secret_key="x" * 64)
    app = create_app(settings, publisher=publisher)
    offload(app).engine.dispose()


# -- logs --------------------------------------------------------------------------------------


@pytest.fixture
def json_log():
    """Everything logged while the test runs, as the JSON lines production would write."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.addHandler(handler)
    yield stream
    root.removeHandler(handler)


def test_a_failed_send_logs_no_address_phone_or_code(settings, publisher, json_log):
    refused = PermanentSendError("recipient refused: {'ada@example.com': (550, b'no such user')}")
    app = create_app(
        settings,
        publisher=publisher,
        email_sender=RecordingSender(fail_with=refused),
        sms_sender=RecordingSender(
            fail_with=PermanentSendError(
                "gateway refused +447911123456: Your Offload verification code is 123456"
            )
        ),
    )
    webtest.TestApp(app).post_json("/api/users?mode=serial", ADA, status=201)
    lines = [json.loads(line) for line in json_log.getvalue().splitlines()]
    assert any("send failed" in line["message"] for line in lines)
    text = json_log.getvalue()
    for secret in ("ada@example.com", "+447911123456", "123456"):
        assert secret not in text
    assert "***@example.com" in text and "+44***56" in text


def test_the_formatter_masks_extras_and_tracebacks(json_log):
    log = logging.getLogger("offload.test")
    try:
        raise ValueError("bad address grace@example.com")
    except ValueError:
        log.exception("failed for %s", "+16502530000", extra={"to": "grace@example.com"})
    entry = json.loads(json_log.getvalue().splitlines()[-1])
    assert entry["to"] == "g***@example.com"
    assert "+16502530000" not in entry["message"]
    assert "grace@example.com" not in entry["exception"]


PERSONAL = {"email", "phone", "to", "code", "sms_code", "body", "text", "token"}


def _names(node: ast.AST) -> set[str]:
    """Attribute and variable names used in an expression, except inside mask_*() calls."""
    if isinstance(node, ast.Call) and getattr(node.func, "id", "").startswith("mask_"):
        return set()
    found = set()
    if isinstance(node, ast.Attribute):
        found.add(node.attr)
    elif isinstance(node, ast.Name):
        found.add(node.id)
    for child in ast.iter_child_nodes(node):
        found |= _names(child)
    return found


def test_no_log_call_passes_personal_data_unmasked():
    """A static check of every log call in app/ and services/: no argument that names an
    email, phone, code or message body goes in without mask_email/mask_phone."""
    offenders = []
    for path in [*PROJECT_ROOT.glob("app/**/*.py"), *PROJECT_ROOT.glob("services/**/*.py")]:
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if not (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr in {"debug", "info", "warning", "error", "exception", "critical"}
                and re.search(r"log", ast.unparse(node.func.value), re.IGNORECASE)
            ):
                continue
            arguments = [*node.args[1:], *(k.value for k in node.keywords)]
            leaked = set().union(*(_names(a) for a in arguments)) & PERSONAL if arguments else set()
            if leaked:
                offenders.append(f"{path.relative_to(PROJECT_ROOT)}:{node.lineno} {sorted(leaked)}")
    assert offenders == []
