"""Schemathesis fuzzes the JSON API in-process (WSGI, no network) against its OpenAPI document.

Each operation gets schema-valid requests, and each operation that takes input also gets
schema-invalid ones; every response must be no 500, and match the document (status, content
type, headers, body schema). Bounded: at most MAX_EXAMPLES requests per operation and mode, no
shrinking time to speak of, a deadline per request. The number of requests sent is written to
test-artifacts/fuzz-requests.json.
"""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from schemathesis import GenerationMode
from schemathesis.specs.openapi.checks import positive_data_acceptance

from app import create_app
from app.extension import offload
from app.senders import RecordingSender

MAX_EXAMPLES = 50
DEADLINE = timedelta(seconds=2)

# The schema can say a phone is a string; only phonenumbers can say it is a real number, and a
# code can be well-formed and wrong. A 400 for such schema-valid input is correct (and
# documented), so the check that every schema-valid request is accepted does not apply here.
EXCLUDED_CHECKS = [positive_data_acceptance]

OPERATIONS = [
    ("/api/users", "POST", GenerationMode.POSITIVE),
    ("/api/users", "POST", GenerationMode.NEGATIVE),
    ("/api/status/{token}", "GET", GenerationMode.POSITIVE),
    ("/api/status/{token}/verify-phone", "POST", GenerationMode.POSITIVE),
    ("/api/status/{token}/verify-phone", "POST", GenerationMode.NEGATIVE),
    ("/api/status/{token}/resend", "POST", GenerationMode.POSITIVE),
    ("/api/status/{token}/resend", "POST", GenerationMode.NEGATIVE),
    ("/api/openapi.json", "GET", GenerationMode.POSITIVE),
]


# Requests sent per operation and mode in this run; rewritten to the artifact after each test.
SENT: dict[str, int] = {}


def record(artifacts_dir: Path, name: str, sent: int) -> None:
    SENT[name] = sent
    summary = {"total": sum(SENT.values()), "by_operation": SENT}
    (artifacts_dir / "fuzz-requests.json").write_text(json.dumps(summary, indent=2) + "\n")


@pytest.mark.parametrize(
    ("path", "method", "mode"), OPERATIONS, ids=[f"{m} {p} {g.value}" for p, m, g in OPERATIONS]
)
def test_api_survives_fuzzing_and_matches_its_document(
    settings, publisher, path, method, mode, artifacts_dir
):
    # Limits high enough to reach past them: the 429 itself is checked in test_openapi.
    app = create_app(
        settings.with_overrides(
            rate_limit_registrations="100000/minute", rate_limit_verifications="100000/minute"
        ),
        publisher=publisher,
        email_sender=RecordingSender(),
        sms_sender=RecordingSender(),
    )
    operation = schemathesis.openapi.from_wsgi("/api/openapi.json", app)[path][method]
    sent = 0

    @given(case=operation.as_strategy(generation_mode=mode))
    @hypothesis_settings(
        max_examples=MAX_EXAMPLES,
        deadline=DEADLINE,
        derandomize=True,  # the same requests on every run: a CI failure reproduces locally
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
    )
    def fuzz(case):
        nonlocal sent
        sent += 1
        case.call_and_validate(excluded_checks=EXCLUDED_CHECKS)

    fuzz()
    record(artifacts_dir, f"{method} {path} {mode.value}", sent)
    # A document-only operation has one request to make; the others must really be explored.
    assert sent >= (1 if path == "/api/openapi.json" else MAX_EXAMPLES // 2)
    offload(app).engine.dispose()
