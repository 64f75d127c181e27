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

import urllib3
from urllib3.exceptions import HTTPError

from app.config import Settings
from app.jobs import SmsJob
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
        # redirects behind our back: the consumer's retry policy decides.
        self._http = urllib3.PoolManager(
            num_pools=2,
            maxsize=max_connections,
            retries=False,
            timeout=urllib3.Timeout(total=timeout),
        )

    @classmethod
    def from_settings(cls, settings: Settings) -> HttpSmsSender:
        return cls(settings.sms_gateway_url, timeout=settings.sms_timeout)

    def send(self, job: SmsJob) -> None:
        body = json.dumps(
            {"to": job.to, "body": job.body, "idempotency_key": job.notification_id}
        ).encode()
        try:
            response = self._http.request(
                "POST",
                self.gateway_url,
                body=body,
                headers={
                    "Content-Type": "application/json",
                    "Idempotency-Key": job.notification_id,
                },
            )
        except (HTTPError, OSError, ValueError) as exc:
            # ValueError: a URL urllib3 cannot use (no scheme, bad port) is not worth a crash.
            raise TransientSendError(f"SMS gateway unreachable: {exc!r}") from exc
        status = response.status
        if 200 <= status < 300:
            return
        text = response.data[:200].decode("utf-8", "replace")
        detail = f"SMS gateway answered {status}: {text!r}"
        if 400 <= status < 500 and status not in _RETRYABLE_4XX:
            raise PermanentSendError(detail)
        raise TransientSendError(detail)
