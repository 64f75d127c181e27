"""Hostile bodies inside the size limit: each answers the usual 400 JSON error, never a 500.

A fixed corpus beside the schema-driven fuzzing of test_fuzz.py: schemathesis generates bodies
from the schema, which never nests thousands deep.
"""

from __future__ import annotations

import pytest

from app.models import new_id

LIMIT = 16 * 1024  # the default MAX_BODY_BYTES

DEEP = 5_000  # far past Python's recursion limit, well inside the body limit
CORPUS = {
    "nested-arrays": "[" * DEEP + "]" * DEEP,
    "nested-objects": '{"a":' * (DEEP // 2) + "1" + "}" * (DEEP // 2),
    "mixed-nesting": '[{"a":' * (DEEP // 3) + "1" + "}]" * (DEEP // 3),
    "unclosed-nesting": "[" * (LIMIT - 10),
    "object-holding-deep-value": '{"name": ' + "[" * DEEP + "]" * DEEP + "}",
}


@pytest.mark.parametrize("name", sorted(CORPUS))
@pytest.mark.parametrize("path", ["/api/users", "/api/status/{token}/verify-phone"])
def test_deeply_nested_json_is_a_400_json_error(testapp, name, path):
    body = CORPUS[name].encode()
    assert len(body) <= LIMIT
    response = testapp.post(
        path.format(token=new_id()),
        body,
        content_type="application/json",
        expect_errors=True,
    )
    assert response.status_int == 400, response.text[:200]
    assert response.content_type == "application/json"
    assert response.json["error"] == "invalid_json"
    assert response.json["message"]
