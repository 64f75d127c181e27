"""users.status_token_hash and users.email_verification_id: the id is no credential

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-27 05:30:00
"""

import uuid
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("users", schema=None) as batch_op:
        batch_op.add_column(sa.Column("status_token_hash", sa.String(length=64), nullable=True))
        batch_op.add_column(
            sa.Column("email_verification_id", sa.String(length=32), nullable=True)
        )
    # Users registered before this have no status token (their status is reached through a
    # confirmation link or a new registration once expired), and get a verification id so a
    # resent link works; links sent before carry the id and no longer work.
    users = sa.table("users", sa.column("id", sa.String), sa.column("email_verification_id"))
    connection = op.get_bind()
    for (user_id,) in connection.execute(sa.select(users.c.id)).all():
        connection.execute(
            users.update()
            .where(users.c.id == user_id)
            .values(email_verification_id=uuid.uuid4().hex)
        )
    with op.batch_alter_table("users", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_users_status_token_hash"), ["status_token_hash"], unique=True
        )
        batch_op.create_index(
            batch_op.f("ix_users_email_verification_id"), ["email_verification_id"], unique=True
        )


def downgrade() -> None:
    with op.batch_alter_table("users", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_users_email_verification_id"))
        batch_op.drop_index(batch_op.f("ix_users_status_token_hash"))
        batch_op.drop_column("email_verification_id")
        batch_op.drop_column("status_token_hash")
