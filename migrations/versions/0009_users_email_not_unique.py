"""users.email: no unique constraint of its own; email_key's decides

`email_key` is the address case-folded, and unique: two rows with the same address would have
the same key, so the constraint on `email` never refused anything the key's did not. It cost
every registration one more insert into a B-tree keyed by a random string, and the storage of
a copy of every address. Nothing looks users up by `email`.

On SQLite dropping a constraint rebuilds the table (batch mode): a copy of every user row.

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-28 02:00:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("users") as batch:
        batch.drop_constraint("uq_users_email", type_="unique")


def downgrade() -> None:
    with op.batch_alter_table("users") as batch:
        batch.create_unique_constraint("uq_users_email", ["email"])
