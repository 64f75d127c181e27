# A package only so the wheel carries the revisions; Alembic skips this file.
