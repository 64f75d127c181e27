"""notifications.event_id: the domain event whose subscribers send the row

A registration publishes one `user.registered` event; the email and SMS consumers each find
their own row by it. Rows written before this revision, and resends, have none.

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-27 08:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("notifications") as batch:
        batch.add_column(sa.Column("event_id", sa.String(length=32), nullable=True))
        batch.create_index(batch.f("ix_notifications_event_id"), ["event_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("notifications") as batch:
        batch.drop_index(batch.f("ix_notifications_event_id"))
        batch.drop_column("event_id")
