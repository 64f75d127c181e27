"""The registration form, filled and submitted like a person would, through WebTest."""


def fill(form, **values):
    for field, value in values.items():
        form[field] = value
    return form


def test_register_redirects_to_a_status_page(testapp, email_sender):
    page = testapp.get("/register")
    form = fill(
        page.forms["register-form"],
        name="Grace Hopper",
        email="grace@example.com",
        phone="+1 650 253 0000",
    )
    form["mode"] = "serial"
    response = form.submit()
    assert response.status_int == 303
    status_page = response.follow()
    assert "Check your email and phone" in status_page.text
    assert status_page.html.select_one("#notification-email [data-status]")["data-status"] == "sent"
    assert status_page.html.select_one("#notification-sms [data-status]")["data-status"] == "sent"
    assert [job.to for job in email_sender.sent] == ["grace@example.com"]


def test_queued_status_page_refreshes_until_settled(testapp):
    form = fill(
        testapp.get("/register").forms["register-form"],
        name="Lin",
        email="lin@example.com",
        phone="+16502530001",
    )
    status_page = form.submit().follow()
    assert (
        status_page.html.select_one("#notification-email [data-status]")["data-status"] == "queued"
    )
    assert status_page.html.select_one('meta[http-equiv="refresh"]') is not None


def test_invalid_input_shows_field_errors_and_keeps_values(testapp):
    form = fill(
        testapp.get("/register").forms["register-form"], name="", email="not-an-email", phone="12"
    )
    response = form.submit(status=400)
    for field in ("name", "email", "phone"):
        error = response.html.select_one(f"#{field}-error")
        assert error is not None and error.text.strip()
        assert response.html.select_one(f"#{field}")["aria-invalid"] == "true"
        assert f"{field}-error" in response.html.select_one(f"#{field}")["aria-describedby"]
    assert response.forms["register-form"]["email"].value == "not-an-email"


def test_duplicate_shows_409_on_the_form(testapp):
    for expected in (303, 409):
        form = fill(
            testapp.get("/register").forms["register-form"],
            name="Kay",
            email="kay@example.com",
            phone="+16502530002",
        )
        response = form.submit(status=expected)
    assert "already registered" in response.html.select_one("#email-error").text


def test_post_without_csrf_token_is_refused(testapp):
    testapp.post(
        "/register",
        {"name": "Eve", "email": "eve@example.com", "phone": "+16502530003"},
        status=400,
    )


def test_unknown_status_page_is_404(testapp):
    testapp.get("/users/nobody", status=404)


def test_security_headers(testapp):
    headers = testapp.get("/register").headers
    assert "frame-ancestors 'none'" in headers["Content-Security-Policy"]
    assert "unsafe-inline" not in headers["Content-Security-Policy"]
    assert headers["X-Content-Type-Options"] == "nosniff"
    assert headers["Referrer-Policy"] == "strict-origin-when-cross-origin"
