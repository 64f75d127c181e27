"""Opening the email link confirms nothing: link scanners follow links. The page's button does."""

import re

ADA = {"name": "Ada Lovelace", "email": "ada@example.com", "phone": "+44 7911 123456"}


def test_following_the_link_only_shows_a_button_and_the_button_confirms(testapp, email_sender):
    status = testapp.post_json("/api/users?mode=serial", ADA, status=201).headers["Location"]
    link = re.search(r"http://testserver(/verify-email/\S+)", email_sender.sent[-1].text).group(1)

    # A scanner (or a person) opens the link, twice: nothing is confirmed yet.
    for _ in range(2):
        page = testapp.get(link)
        assert page.html.select_one("#verify-email-outcome")["data-outcome"] == "confirm"
        assert testapp.get(status).json["user"]["email_verified"] is False

    confirmed = page.forms["verify-email-form"].submit()
    assert confirmed.html.select_one("#verify-email-outcome")["data-outcome"] == "confirmed"
    assert testapp.get(status).json["user"]["email_verified"] is True
    # A POST without the form's CSRF token (another site's) is refused.
    testapp.post(link, {}, status=400)
