"""Run Alembic from code (tests, `make run`, the Procfile's release step)."""

from __future__ import annotations

import os
import sys

from alembic import command
from alembic.config import Config

PROJECT_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def alembic_config(database_url: str | None = None) -> Config:
    config = Config(toml_file=os.path.join(PROJECT_ROOT, "pyproject.toml"))
    if database_url:
        config.attributes["database_url"] = database_url
    return config


def upgrade(database_url: str | None = None, revision: str = "head") -> None:
    command.upgrade(alembic_config(database_url), revision)


def main() -> None:
    upgrade(revision=sys.argv[1] if len(sys.argv) > 1 else "head")


if __name__ == "__main__":
    main()
