"""Email-link tokens and SMS codes: the cryptography only. No Flask, no database.

The email token is signed and expires (itsdangerous). It carries the user's random email
verification id (never the primary key: the token is signed, not encrypted, so whatever it
carries can be read) and a keyed digest of the address it was sent to, not the address
itself: links end up in browser history and proxy logs, and the digest still makes a link sent
to an old address useless once the address changes. Nothing about the token is stored beyond
the verification id; it is single-use because verifying sets
`email_verified_at`, and a used link is refused after that (see app/accounts.py).

The SMS code is short and random, stored only as a keyed hash, and compared in constant time.

The status token opens a user's status (API) and is handed out once, at registration: 256
random bits, stored only as a SHA-256 digest (unkeyed is enough for a value that cannot be
guessed), looked up by that digest.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import secrets
from dataclasses import dataclass

from itsdangerous import BadSignature, SignatureExpired, TimestampSigner, URLSafeTimedSerializer

SMS_CODE_DIGITS = 6
_TOKEN_SALT = "offload.verify-email"  # noqa: S105 - a namespace, not a secret


class InvalidToken(Exception):
    """The verification link is malformed, forged, or for another address."""


class ExpiredToken(InvalidToken):
    """The verification link was genuine but is too old."""


@dataclass(frozen=True)
class EmailClaim:
    """What a genuine email token says: the user with this verification id received a link at
    the address digested."""

    verification_id: str
    email_digest: str


@functools.lru_cache(maxsize=8)
def _current_serializer(secret_key: str) -> URLSafeTimedSerializer:
    # Built once per key: itsdangerous derives the signing key in the constructor, which cost
    # more than signing the token itself, on every registration.
    return URLSafeTimedSerializer(secret_key, salt=_TOKEN_SALT)


def _serializer(secret_key: str, issued_at: int | None = None) -> URLSafeTimedSerializer:
    if issued_at is None:
        return _current_serializer(secret_key)

    fixed: int = issued_at

    class IssuedAt(TimestampSigner):
        def get_timestamp(self) -> int:
            return fixed

    return URLSafeTimedSerializer(secret_key, salt=_TOKEN_SALT, signer=IssuedAt)


def email_digest(secret_key: str, email: str) -> str:
    mac = hmac.new(secret_key.encode(), b"offload.email:" + email.encode(), hashlib.sha256)
    return mac.hexdigest()[:32]


def make_email_token(
    secret_key: str, verification_id: str, email: str, *, issued_at: int | None = None
) -> str:
    """A signed link token; `issued_at` (Unix seconds) backdates it, for tests of expiry."""
    claim = {"v": verification_id, "e": email_digest(secret_key, email)}
    return _serializer(secret_key, issued_at).dumps(claim)


def read_email_token(secret_key: str, token: str, *, max_age: int) -> EmailClaim:
    """Return the claim in a genuine, unexpired token; raise InvalidToken or ExpiredToken."""
    try:
        data = _serializer(secret_key).loads(token, max_age=max_age)
    except SignatureExpired:
        raise ExpiredToken("this verification link has expired") from None
    except (BadSignature, UnicodeEncodeError):
        # UnicodeEncodeError: a lone surrogate cannot be encoded, so it cannot be a token we made.
        raise InvalidToken("this verification link is not valid") from None
    if (
        not isinstance(data, dict)
        or not isinstance(data.get("v"), str)
        or not isinstance(data.get("e"), str)
    ):
        raise InvalidToken("this verification link is not valid")
    return EmailClaim(verification_id=data["v"], email_digest=data["e"])


def claim_matches(secret_key: str, claim: EmailClaim, email: str) -> bool:
    """Whether the token was made for this address (constant time)."""
    expected = email_digest(secret_key, email).encode()
    return hmac.compare_digest(expected, claim.email_digest.encode(errors="replace"))


def make_sms_code() -> str:
    return f"{secrets.randbelow(10**SMS_CODE_DIGITS):0{SMS_CODE_DIGITS}d}"


def hash_sms_code(secret_key: str, user_id: str, code: str) -> str:
    return hmac.new(secret_key.encode(), f"{user_id}:{code}".encode(), hashlib.sha256).hexdigest()


def sms_code_matches(secret_key: str, user_id: str, code: str, stored_hash: str) -> bool:
    """Whether `code` is the one whose hash was stored (constant time; `code` is ASCII digits)."""
    expected = hash_sms_code(secret_key, user_id, code).encode()
    return hmac.compare_digest(expected, stored_hash.encode())


STATUS_TOKEN_BYTES = 32


def make_status_token() -> str:
    return secrets.token_urlsafe(STATUS_TOKEN_BYTES)


def hash_status_token(token: str) -> str:
    return hashlib.sha256(token.encode(errors="surrogatepass")).hexdigest()
