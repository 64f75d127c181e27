"""SMS through an HTTP gateway.

The wire contract: `POST SMS_GATEWAY_URL` with JSON `{"to": "+E164", "body": ..., "idempotency_key":
...}`, the key being the notification id (also sent as the `Idempotency-Key` header) so a gateway
that honours it never sends twice, even when a timed-out request did reach it. 2xx is sent, 4xx a
permanent failure (but 408, 425 and 429), 5xx or a timeout transient.

The client is urllib3, the transport under `requests`: a consumer sends thousands of the same
small POST, and requests' session, hooks and cookie handling cost about as much CPU again as the
request itself.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

import urllib3
from urllib3.exceptions import HTTPError
from urllib3.util import parse_url

from app.config import Settings
from app.jobs import SmsJob
from app.logs import mask_phone, redact
from app.senders import PermanentSendError, TransientSendError

# Timeout, too early, rate limited: the gateway asks us to come back, not to give up.
_RETRYABLE_4XX = frozenset({408, 425, 429})


class HttpSmsSender:
    def __init__(
        self, gateway_url: str, *, timeout: float = 10.0, max_connections: int = 100
    ) -> None:
        self.gateway_url = gateway_url
        self.timeout = timeout
        # Keep-alive to the gateway, one connection per concurrent send; no retries or
        # redirects behind our back: the consumer's retry policy decides. The gateway's own
        # pool, not a PoolManager: that one parses the URL and looks its pool up on every send.
        self._pool = urllib3.connection_from_url(
            gateway_url,
            maxsize=max_connections,
            retries=False,
            timeout=urllib3.Timeout(total=timeout),
        )
        self._target = parse_url(gateway_url).request_uri

    @classmethod
    def from_settings(cls, settings: Settings) -> HttpSmsSender:
        return cls(settings.sms_gateway_url, timeout=settings.sms_timeout)

    def send(self, job: SmsJob) -> None:
        body = json.dumps(
            {"to": job.to, "body": job.body, "idempotency_key": job.notification_id}
        ).encode()
        try:
            response = self._pool.urlopen(
                "POST",
                self._target,
                body=body,
                headers={
                    "Content-Type": "application/json",
                    "Idempotency-Key": job.notification_id,
                },
                redirect=False,
            )
        except (HTTPError, OSError) as exc:
            raise TransientSendError(f"SMS gateway unreachable: {exc!r}") from exc
        status = response.status
        if 200 <= status < 300:
            return
        # The reply is stored on the notification and shown on status pages: gateways echo the
        # number and the message (with its code), so both are masked.
        reply = response.data.decode("utf-8", "replace").replace(job.body, "[message]")[:200]
        reply = redact(reply.replace(job.to.lstrip("+"), mask_phone(job.to)))
        detail = f"SMS gateway answered {status}: {reply!r}"
        if 400 <= status < 500 and status not in _RETRYABLE_4XX:
            raise PermanentSendError(detail)
        raise TransientSendError(
            detail, retry_after_ms=retry_after_ms(response.headers.get("Retry-After"))
        )


def retry_after_ms(value: str | None) -> int:
    """A Retry-After header (seconds, or an HTTP date) in milliseconds; 0 when absent or bad."""
    if not value:
        return 0
    value = value.strip()
    if value.isascii() and value.isdigit():
        return int(value) * 1000
    try:
        moment = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return 0
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return max(0, int((moment - datetime.now(UTC)).total_seconds() * 1000))
