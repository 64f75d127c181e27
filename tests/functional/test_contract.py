"""The API document as a contract: Schemathesis, from outside, against a live `python wsgi.py`.

The README's command, run here as it is run by hand: every check, every phase (examples,
coverage, fuzzing, and the stateful phase that follows the document's links from a
registration's `status_token` to the operations that take it), a fixed seed and at most
MAX_EXAMPLES cases per operation. schemathesis.toml (at the repository root) supplies the
`phone` format's generator and the statuses a well-formed request may still meet. Any finding
fails the test.

The server is the real one, with no broker: serial dispatch to the local sinks, a private
migrated SQLite database, a free port on 127.0.0.1, rate limits off (429 is checked in
test_openapi), the operator's choice of mode (ALLOW_CLIENT_MODE=false). What each operation
answered, per status, is written to test-artifacts/contract-requests.json, and no operation may
have been reached only as 404.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path

import pytest
import requests

from devstack import PROJECT_ROOT
from devstack.ports import free_port
from devstack.processes import terminate
from devstack.sinks.process import start_sink_process

pytestmark = pytest.mark.slow

MAX_EXAMPLES = 200
SEED = 7
STARTUP_SECONDS = 30
RUN_SECONDS = 240

# Each path of the document, as the regex its real URLs match, and its operation.
OPERATIONS = [
    (re.compile(r"^/api/users$"), "POST", "POST /api/users"),
    (re.compile(r"^/api/status/[^/]*$"), "GET", "GET /api/status/{token}"),
    (
        re.compile(r"^/api/status/[^/]*/verify-phone$"),
        "POST",
        "POST /api/status/{token}/verify-phone",
    ),
    (re.compile(r"^/api/status/[^/]*/resend$"), "POST", "POST /api/status/{token}/resend"),
]
# A verify-phone that says the code is wrong (or its attempts spent) found the user by its token.
# (`invalid_code` does not: a code that is not a string is refused before the look-up.)
TOKEN_OPENED_ERRORS = {"wrong_code", "too_many_attempts", "code_expired"}


@pytest.fixture
def live_server(database_url: str, tmp_path: Path):
    smtp = start_sink_process("smtp", 0, tmp_path / "email.jsonl", delay_ms=0)
    sms = start_sink_process("sms", 0, tmp_path / "sms.jsonl", delay_ms=0)
    port = free_port()
    env = {
        **os.environ,
        "OFFLOAD_ENV": "development",
        "PORT": str(port),
        "DATABASE_URL": database_url,
        "DISPATCH_MODE": "serial",
        "ALLOW_CLIENT_MODE": "false",
        "RATE_LIMIT_ENABLED": "false",
        "SMTP_HOST": "127.0.0.1",
        "SMTP_PORT": str(smtp.port),
        "SMS_GATEWAY_URL": sms.messages_url,
        # Nothing listens there: serial dispatch never publishes.
        "AMQP_URL": f"amqp://guest:guest@127.0.0.1:{free_port()}/%2F",
        "LOG_LEVEL": "CRITICAL",
    }
    log = (tmp_path / "web.log").open("wb")
    web = subprocess.Popen(
        [sys.executable, "wsgi.py"], cwd=PROJECT_ROOT, env=env, stdout=log, stderr=log
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + STARTUP_SECONDS
        while True:
            try:
                requests.get(f"{base}/healthz", timeout=2)
                break
            except requests.RequestException:
                assert web.poll() is None, (tmp_path / "web.log").read_text()
                assert time.monotonic() < deadline, "wsgi.py did not start"
                time.sleep(0.1)
        yield base
    finally:
        terminate(web)
        log.close()
        smtp.stop()
        sms.stop()


def count_by_operation(har: dict) -> dict[str, dict[str, int]]:
    """Responses per documented operation and status, from the run's HAR report."""
    counts: dict[str, Counter[str]] = defaultdict(Counter)
    for entry in har["log"]["entries"]:
        request, response = entry["request"], entry["response"]
        path = re.sub(r"^https?://[^/]+", "", request["url"]).split("?")[0]
        for pattern, method, name in OPERATIONS:
            if pattern.match(path) and request["method"] == method:
                counts[name][str(response["status"])] += 1
                if name.endswith("verify-phone") and response["status"] == 400:
                    text = response.get("content", {}).get("text") or "{}"
                    if json.loads(text).get("error") in TOKEN_OPENED_ERRORS:
                        counts[name]["token opened"] += 1
    return {name: dict(sorted(statuses.items())) for name, statuses in counts.items()}


def test_schemathesis_finds_nothing_against_a_live_server(live_server, tmp_path, artifacts_dir):
    reports = tmp_path / "schemathesis"
    command = [
        str(Path(sys.executable).with_name("schemathesis")),
        "run",
        f"{live_server}/api/openapi.json",
        "--checks",
        "all",
        "-n",
        str(MAX_EXAMPLES),
        "--seed",
        str(SEED),
        "--report",
        "har",
        "--report-dir",
        str(reports),
        "--no-color",
    ]
    # From the repository root, so schemathesis.toml (and its hooks) are read as by hand.
    run = subprocess.run(
        command, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=RUN_SECONDS
    )
    output = run.stdout + run.stderr
    (artifacts_dir / "contract-run.txt").write_text(output)
    (har_path,) = reports.glob("har-*.json")
    counts = count_by_operation(json.loads(har_path.read_text()))
    summary = {
        "command": " ".join(["schemathesis", *command[1:]]),
        "exit_code": run.returncode,
        "by_operation": {
            name: {
                "requests": sum(v for k, v in statuses.items() if k.isdigit()),
                "not_404": sum(v for k, v in statuses.items() if k.isdigit() and k != "404"),
                "statuses": statuses,
            }
            for name, statuses in counts.items()
        },
    }
    (artifacts_dir / "contract-requests.json").write_text(json.dumps(summary, indent=2) + "\n")

    assert run.returncode == 0, output
    (verdict,) = re.findall(r"^=+ (.*) =+$", output, re.MULTILINE)[-1:]
    assert "failure" not in verdict and "error" not in verdict, output
    # Every phase ran, the stateful one included.
    for phase in ("Examples", "Coverage", "Fuzzing", "Stateful"):
        assert re.search(rf"✅\s+{phase}", output), f"{phase} did not pass:\n{output}"
    # No operation was reached only as 404: each answered something else as well.
    for _, _, name in OPERATIONS:
        assert summary["by_operation"].get(name, {}).get("not_404", 0) > 0, summary
    # The real flow was walked: a registration's token opened each operation that takes it.
    statuses = {name: counts[name] for _, _, name in OPERATIONS}
    assert statuses["POST /api/users"].get("201", 0) > 0
    assert statuses["GET /api/status/{token}"].get("200", 0) > 0
    assert statuses["POST /api/status/{token}/resend"].get("202", 0) > 0
    assert statuses["POST /api/status/{token}/verify-phone"].get("token opened", 0) > 0
