"""Fixtures shared by the unit tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from devstack.sinks.smtp import SmtpSink


@pytest.fixture
def smtp_sink(tmp_path: Path) -> Iterator[SmtpSink]:
    """The SMTP sink on a free port, answering at once."""
    sink = SmtpSink("127.0.0.1", 0, tmp_path / "email.jsonl", delay=0)
    sink.start()
    yield sink
    sink.stop()
