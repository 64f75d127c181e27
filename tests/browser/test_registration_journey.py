"""A person in a real browser (headless Chromium) against the real stack.

Register with mistakes, then properly; watch the status page turn to "sent" by itself while the
email consumer catches up; open the link from the email that reached the SMTP sink; type the
code from the SMS that reached the gateway sink. Screenshots of each step go to test-artifacts/.
"""

from __future__ import annotations

import os
import random
import re
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import phonenumbers
import pytest

from tests.conftest import require

pytestmark = pytest.mark.browser

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]
DESKTOP = {"width": 1280, "height": 900}
PHONE = {"width": 390, "height": 844}
WAIT_MS = 20_000


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    require(os.path.exists(CHROMIUM), "Debian's chromium (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True
        )
        yield browser
        browser.close()


class Watched:
    """A page plus what it complained about: script errors and console errors, CSP refusals
    included. A page answered with a 4xx on purpose (a form with errors) logs "Failed to load
    resource"; that is the expected status, not a fault."""

    def __init__(self, page: Any, shots: Path) -> None:
        self.page = page
        self.shots = shots
        self.errors: list[str] = []
        self.navigations = 0
        page.on("console", self._console)
        page.on("pageerror", lambda e: self.errors.append(str(e)))
        page.on("framenavigated", self._navigated)

    def _console(self, message: Any) -> None:
        if message.type == "error" and not message.text.startswith("Failed to load resource"):
            self.errors.append(message.text)

    def _navigated(self, frame: Any) -> None:
        if frame == self.page.main_frame:
            self.navigations += 1

    def shot(self, name: str) -> None:
        self.page.screenshot(path=str(self.shots / f"browser-{name}.png"), full_page=True)


@pytest.fixture
def open_page(browser: Any, artifacts_dir: Path) -> Iterator[Callable[..., Watched]]:
    contexts = []

    def open_(viewport: dict[str, int] = DESKTOP, **options: Any) -> Watched:
        context = browser.new_context(viewport=viewport, **options)
        context.set_default_timeout(WAIT_MS)
        contexts.append(context)
        return Watched(context.new_page(), artifacts_dir)

    yield open_
    for context in contexts:
        context.close()


def new_person() -> dict[str, str]:
    while True:
        phone = f"+1415555{random.randrange(10_000):04d}"
        if phonenumbers.is_valid_number(phonenumbers.parse(phone)):
            break
    return {
        "name": "Grace Hopper",
        "email": f"grace-{uuid.uuid4().hex[:10]}@example.com",
        "phone": phone,
    }


def wait_for_record(stack: Any, sink: str, to: str, timeout: float = 20.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for record in stack.sinks[sink].records():
            if record["to"] == to:
                return record  # type: ignore[no-any-return]
        time.sleep(0.1)
    raise AssertionError(f"nothing for {to} reached the {sink} sink in {timeout:.0f}s")


def fill_registration(page: Any, person: dict[str, str], mode: str = "queued") -> None:
    page.get_by_label("Full name").fill(person["name"])
    page.get_by_label("Email address").fill(person["email"])
    page.get_by_label("Mobile phone").fill(person["phone"])
    page.get_by_label(mode, exact=True).check()


def test_register_watch_queued_mode_and_verify_email_and_phone(stack: Any, open_page: Any) -> None:
    watched = open_page()
    page = watched.page
    person = new_person()

    # 1. The form, and the field errors for bad input, each tied to its field.
    page.goto(f"{stack.base_url}/register")
    watched.shot("01-register")
    page.get_by_label("Email address").fill("not-an-email")
    page.get_by_label("Mobile phone").fill("12")
    page.get_by_role("button", name="Create account").click()
    for field in ("name", "email", "phone"):
        error = page.locator(f"#{field}-error")
        assert error.is_visible() and error.inner_text().strip()
        assert page.locator(f"#{field}").get_attribute("aria-invalid") == "true"
    assert page.get_by_role("alert").is_visible()
    assert page.get_by_label("Email address").input_value() == "not-an-email"
    watched.shot("02-register-field-errors")

    # 2. A valid registration in queued mode, with the email consumer stopped, so the page is
    # seen pending and then turning to "sent" when the consumer comes back.
    stack.stop_process("email")
    try:
        fill_registration(page, person)
        page.get_by_role("button", name="Create account").click()
        page.wait_for_url(re.compile(r"/status$"))
        status_url = page.url
        # The page belongs to this browser's session: no id in its address or anywhere on it.
        assert re.search(r"[0-9a-f]{32}", page.content()) is None
        email_status = page.locator("#notification-email [data-status]")
        assert email_status.get_attribute("data-status") in ("pending", "queued")
        page.wait_for_selector('#notification-sms [data-status="sent"]')
        watched.shot("03-status-email-waiting")
        navigations = watched.navigations
    finally:
        stack.start_worker("email")
    page.wait_for_selector('#notification-email [data-status="sent"]')
    assert watched.navigations == navigations, "the page reloaded instead of updating in place"
    assert page.locator("#live-status").get_attribute("aria-live") == "polite"
    assert "Email sent" in page.locator("#live-status").inner_text()
    assert page.locator("#notification-email .status").inner_text() == "sent"
    watched.shot("04-status-sent")

    # 3. The link in the email that reached the SMTP sink.
    email = wait_for_record(stack, "smtp", person["email"])
    link = re.search(r"(\S+/verify-email/\S+)", email["text"]).group(1)
    assert link.startswith(f"{stack.base_url}/verify-email/")
    page.goto(link)
    # Opening the link confirms nothing (link scanners open links too): the button does.
    assert page.locator("#verify-email-outcome").get_attribute("data-outcome") == "confirm"
    page.get_by_role("button", name="Confirm my email address").click()
    page.wait_for_selector('#verify-email-outcome[data-outcome="confirmed"]')
    assert "confirmed" in page.get_by_role("heading", level=1).inner_text()
    watched.shot("05-email-confirmed")

    # 4. The code from the SMS that reached the gateway sink, typed into the status page.
    sms = wait_for_record(stack, "sms", person["phone"])
    code = re.search(r"code is (\d{6})", sms["body"]).group(1)
    page.get_by_role("link", name="See your account status").click()
    assert page.url == status_url
    assert page.locator("#email-verification").inner_text() == "confirmed"
    wrong = f"{(int(code) + 1) % 1_000_000:06d}"
    page.get_by_label("Code from the SMS").fill(wrong)
    page.get_by_role("button", name="Confirm phone number").click()
    assert "4 attempts left" in page.locator("#code-error").inner_text()
    assert page.get_by_label("Code from the SMS").get_attribute("aria-invalid") == "true"
    watched.shot("06-phone-wrong-code")
    page.get_by_label("Code from the SMS").fill(code)
    page.get_by_role("button", name="Confirm phone number").click()
    page.wait_for_url(status_url)
    assert page.locator("#phone-verification").inner_text() == "confirmed"
    assert page.get_by_role("status").first.inner_text().strip()
    assert page.locator("#verify-phone-form").count() == 0
    watched.shot("07-phone-confirmed")

    assert watched.errors == []


def test_status_page_fits_a_phone_screen(stack: Any, open_page: Any) -> None:
    watched = open_page(viewport=PHONE, is_mobile=True, has_touch=True)
    page = watched.page
    page.goto(f"{stack.base_url}/register")
    fill_registration(page, new_person(), mode="serial")
    watched.shot("08-register-phone")
    page.get_by_role("button", name="Create account").click()
    page.wait_for_selector('#notification-email [data-status="sent"]')
    overflow = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
    assert overflow <= 0, f"the page scrolls sideways by {overflow}px on a phone"
    assert page.get_by_label("Code from the SMS").get_attribute("inputmode") == "numeric"
    watched.shot("09-status-phone")
    assert watched.errors == []


def test_keyboard_alone_reaches_every_control(stack: Any, open_page: Any) -> None:
    page = open_page().page
    page.goto(f"{stack.base_url}/register")
    reached = []
    for _ in range(12):
        page.keyboard.press("Tab")
        reached.append(
            page.evaluate("document.activeElement.id || document.activeElement.textContent.trim()")
        )
    assert reached[0] == "Skip to the content"
    for control in ("name", "email", "phone", "Create account"):
        assert control in reached


def test_without_javascript_the_forms_still_work(stack: Any, open_page: Any) -> None:
    watched = open_page(java_script_enabled=False)
    page = watched.page
    person = new_person()
    page.goto(f"{stack.base_url}/register")
    fill_registration(page, person, mode="serial")
    page.get_by_role("button", name="Create account").click()
    page.wait_for_url(re.compile(r"/status$"))
    assert page.locator('#notification-email [data-status="sent"]').count() == 1
    code = re.search(r"code is (\d{6})", wait_for_record(stack, "sms", person["phone"])["body"])
    page.get_by_label("Code from the SMS").fill(code.group(1))
    page.get_by_role("button", name="Confirm phone number").click()
    assert page.locator("#phone-verification").inner_text() == "confirmed"
    watched.shot("10-phone-confirmed-without-javascript")
