"""SMS through an HTTP gateway.

The wire contract: `POST SMS_GATEWAY_URL` with JSON `{"to": "+E164", "body": ..., "idempotency_key":
...}`, the key being the notification id (also sent as the `Idempotency-Key` header) so a gateway
that honours it never sends twice, even when a timed-out request did reach it. 2xx is sent, 4xx a
permanent failure (but 408, 425 and 429), 5xx or a timeout transient.
"""

from __future__ import annotations

from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

import requests
from requests.adapters import HTTPAdapter

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
        # Keep-alive to the gateway, one connection per concurrent send (requests keeps only 10
        # by default, and opens a fresh connection for every send past that).
        self._http = requests.Session()
        adapter = HTTPAdapter(pool_connections=1, pool_maxsize=max_connections)
        self._http.mount("http://", adapter)
        self._http.mount("https://", adapter)

    @classmethod
    def from_settings(cls, settings: Settings) -> HttpSmsSender:
        return cls(settings.sms_gateway_url, timeout=settings.sms_timeout)

    def send(self, job: SmsJob) -> None:
        payload = {"to": job.to, "body": job.body, "idempotency_key": job.notification_id}
        try:
            response = self._http.post(
                self.gateway_url,
                json=payload,
                headers={"Idempotency-Key": job.notification_id},
                timeout=self.timeout,
            )
        except requests.RequestException as exc:
            raise TransientSendError(f"SMS gateway unreachable: {exc!r}") from exc
        if 200 <= response.status_code < 300:
            return
        # The reply is stored on the notification and shown on status pages: gateways echo the
        # number and the message (with its code), so both are masked.
        reply = response.text[:200].replace(job.body, "[message]")
        reply = redact(reply.replace(job.to.lstrip("+"), mask_phone(job.to)))
        detail = f"SMS gateway answered {response.status_code}: {reply!r}"
        if 400 <= response.status_code < 500 and response.status_code not in _RETRYABLE_4XX:
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
