"""Logs: a failed send through the app leaves no address, number or code in them."""

from __future__ import annotations

import json

import webtest

from app import create_app
from app.senders import PermanentSendError, RecordingSender
from tests.functional.helpers import ADA


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
