"""The Server-Timing header the API answers with (`db;dur=0.52, publish;dur=1.80`), written and
read in one place: the API writes it, the benchmark and the tests read it."""

from __future__ import annotations

import contextlib
from collections.abc import Mapping


def format_server_timing(timings_ms: Mapping[str, float]) -> str:
    # The standard header: browsers' dev tools and curl -v show it.
    return ", ".join(f"{step};dur={ms:.2f}" for step, ms in timings_ms.items())


def parse_server_timing(header: str) -> dict[str, float]:
    """`db;dur=0.52, publish;dur=1.80` -> {"db": 0.52, "publish": 1.8}, in the header's order;
    a step without a readable `dur` is left out."""
    steps: dict[str, float] = {}
    for part in header.split(","):
        name, _, params = part.strip().partition(";")
        for param in params.split(";"):
            key, _, value = param.strip().partition("=")
            if key == "dur":
                with contextlib.suppress(ValueError):
                    steps[name.strip()] = float(value)
    return steps
