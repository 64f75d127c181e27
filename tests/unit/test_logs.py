"""Log masking without the app: the formatter, and a static check of every log call."""

from __future__ import annotations

import ast
import json
import logging
import re

from devstack import PROJECT_ROOT


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
