"""users.email_key: uniqueness on the case-folded address

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-27 05:20:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("users", schema=None) as batch_op:
        batch_op.add_column(sa.Column("email_key", sa.String(length=320), nullable=True))
    users = sa.table(
        "users",
        sa.column("id", sa.String),
        sa.column("email", sa.String),
        sa.column("email_key", sa.String),
        sa.column("created_at", sa.DateTime),
    )
    connection = op.get_bind()
    seen: set[str] = set()
    rows = connection.execute(
        sa.select(users.c.id, users.c.email).order_by(users.c.created_at, users.c.id)
    ).all()
    for user_id, email in rows:
        # Python's casefold, as app.models.email_key: SQL's lower() folds ASCII only.
        key = email.casefold()
        if key in seen:
            # Registered twice in other letters before this migration: the first keeps the
            # address; the later one keeps its row under a key no new address can take.
            key = f"{key}#{user_id}"
        seen.add(key)
        connection.execute(users.update().where(users.c.id == user_id).values(email_key=key))
    with op.batch_alter_table("users", schema=None) as batch_op:
        batch_op.alter_column("email_key", existing_type=sa.String(length=320), nullable=False)
        batch_op.create_index(batch_op.f("ix_users_email_key"), ["email_key"], unique=True)


def downgrade() -> None:
    with op.batch_alter_table("users", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_users_email_key"))
        batch_op.drop_column("email_key")
