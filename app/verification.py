"""Email-link tokens and SMS codes. No Flask here: the views and the domain both use it.

The email token is signed and expires (itsdangerous); the SMS code is short, random, stored only
as a keyed hash, and compared in constant time.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

from itsdangerous import BadSignature, SignatureExpired, URLSafeTimedSerializer

SMS_CODE_DIGITS = 6


class InvalidToken(Exception):
    """The verification link is malformed, forged, or for another address."""


class ExpiredToken(InvalidToken):
    """The verification link was genuine but is too old."""


def _serializer(secret_key: str) -> URLSafeTimedSerializer:
    return URLSafeTimedSerializer(secret_key, salt="offload.verify-email")


def make_email_token(secret_key: str, user_id: str, email: str) -> str:
    return _serializer(secret_key).dumps({"user": user_id, "email": email})


def read_email_token(secret_key: str, token: str, *, max_age: int) -> tuple[str, str]:
    """Return (user id, email) from a token, or raise InvalidToken / ExpiredToken."""
    try:
        data = _serializer(secret_key).loads(token, max_age=max_age)
    except SignatureExpired:
        raise ExpiredToken("this verification link has expired") from None
    except BadSignature:
        raise InvalidToken("this verification link is not valid") from None
    if not isinstance(data, dict) or not {"user", "email"} <= data.keys():
        raise InvalidToken("this verification link is not valid")
    return str(data["user"]), str(data["email"])


def make_sms_code() -> str:
    return f"{secrets.randbelow(10**SMS_CODE_DIGITS):0{SMS_CODE_DIGITS}d}"


def hash_sms_code(secret_key: str, user_id: str, code: str) -> str:
    return hmac.new(secret_key.encode(), f"{user_id}:{code}".encode(), hashlib.sha256).hexdigest()


def sms_code_matches(secret_key: str, user_id: str, code: str, stored_hash: str) -> bool:
    return hmac.compare_digest(hash_sms_code(secret_key, user_id, code), stored_hash)
