import json

import pytest

from app.jobs import EmailJob, MalformedJob, SmsJob, decode_job, encode_job


@pytest.mark.parametrize(
    "job",
    [
        EmailJob(notification_id="n1", to="a@example.com", subject="Hi", text="Body"),
        SmsJob(notification_id="n2", to="+16502530000", body="Code 123456"),
    ],
)
def test_round_trip(job):
    assert decode_job(encode_job(job)) == job


def test_wire_format_is_versioned_json():
    body = json.loads(encode_job(SmsJob(notification_id="n", to="+1", body="b")))
    assert body == {"v": 1, "kind": "sms", "notification_id": "n", "to": "+1", "body": "b"}


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"\xff\xfe", "not JSON"),
        (b"{not json", "not JSON"),
        (b"[1, 2]", "not a JSON object"),
        (b'{"v": 2, "kind": "sms"}', "unsupported job version"),
        (b'{"v": 1, "kind": "fax"}', "unknown job kind"),
        (b'{"v": 1, "kind": "sms", "notification_id": "n", "to": "+1"}', "'body'"),
        (
            b'{"v": 1, "kind": "sms", "notification_id": 5, "to": "+1", "body": "b"}',
            "'notification_id'",
        ),
    ],
)
def test_malformed_bodies_are_named(body, reason):
    with pytest.raises(MalformedJob, match=reason):
        decode_job(body)
