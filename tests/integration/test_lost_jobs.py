"""Item 11 of issue 10: a job lost after dead-lettering is found again, against a real broker.

RabbitMQ dead-letters at most once (classic queues), and a retry published to a queue that is
gone vanishes unless it is `mandatory`. Either way the row stays `queued`, which the relay used
not to scan: the relay's sweeper now republishes rows queued for longer than
RELAY_SWEEP_AFTER_SECONDS, and the consumers publish retries mandatory and handle the return.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pika
import pytest
from sqlalchemy import update

from app.db import make_engine, make_session_factory
from app.jobs import retry_queue
from app.models import Notification, User, utcnow
from app.registration import register_user, validate_registration
from app.topology import declare_topology
from tests.integration.helpers import assert_delivered_once, register, unique_user, wait_for

pytestmark = pytest.mark.integration

RETRY_DELAYS_MS = (200, 400, 800)  # as the stack fixture configures them


def stack_sessions(stack: Any):
    return make_session_factory(make_engine(stack.database_url))


def test_a_row_stuck_in_queued_is_swept_and_delivered_once(stack, settings):
    """A row the broker lost (marked queued, no message anywhere) reaches its user after all."""
    sessions = stack_sessions(stack)
    user = unique_user("stuck")
    with sessions() as session:
        registered = register_user(session, settings, validate_registration(user))
        session.execute(
            update(Notification)
            .where(Notification.user_id == registered.user.id)
            .values(status="queued", queued_at=utcnow() - timedelta(hours=1))
        )
        session.commit()
        phone = session.get(User, registered.user.id).phone
    assert_delivered_once(stack, [{"email": user["email"], "phone": phone}], timeout=30)
    with sessions() as session:
        rows = session.query(Notification).filter_by(user_id=registered.user.id).all()
        assert {row.status for row in rows} == {"sent"}


def test_a_retry_whose_queue_is_gone_is_not_lost(stack):
    """The retry queue is deleted under the consumer: its retry comes back (mandatory), the
    consumer declares the topology again, and the job is delivered. The relay, whose sweeper
    would rescue the job anyway, is stopped meanwhile so only the consumer's handling counts."""
    stack.stop_process("relay")
    stack.restart_sink("sms", failure_rate=1.0)
    connection = pika.BlockingConnection(pika.URLParameters(stack.amqp_url))
    try:
        channel = connection.channel()
        channel.queue_delete(retry_queue("sms", RETRY_DELAYS_MS[0]))
        user = register(stack.base_url, "queued", unique_user("lostretry"))["user"]
        sessions = stack_sessions(stack)

        def sms_attempts() -> int:
            with sessions() as session:
                row = session.query(Notification).filter_by(user_id=user["id"], channel="sms").one()
                return row.attempts

        wait_for(lambda: sms_attempts() >= 1, timeout=30, what="the first SMS attempt to fail")
        stack.restart_sink("sms")
        assert_delivered_once(stack, [user], timeout=30)
    finally:
        declare_topology(connection.channel(), RETRY_DELAYS_MS)
        connection.close()
        stack.restart_sink("sms")
        stack.start_worker("relay")
