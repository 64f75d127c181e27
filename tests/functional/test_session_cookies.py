"""The session cookie's serializer is built once per key, and a new key is honoured."""

from app.extension import offload
from app.security import SessionCookies


def test_one_serializer_per_key(app):
    interface = app.session_interface
    assert isinstance(interface, SessionCookies)
    first = interface.get_signing_serializer(app)
    assert first is not None and interface.get_signing_serializer(app) is first
    app.secret_key = offload(app).settings.secret_key + "-rotated"
    rotated = interface.get_signing_serializer(app)
    assert rotated is not first
    assert rotated.loads(rotated.dumps({"a": 1})) == {"a": 1}
