"""Run Alembic from code: `offload-migrate` / `python -m app.migrate`, the tests, `make run`.

The scripts live in the `migrations` package, located through the import system, so this works
from an installed wheel as well as from the repository. The repository's `alembic` command line
reads the same folder through `[tool.alembic]` in pyproject.toml.
"""

from __future__ import annotations

import argparse
import sys
from importlib.resources import files
from pathlib import Path

from alembic import command
from alembic.config import Config

from app.config import load_settings_or_exit


def migrations_dir() -> Path:
    # A regular package on disk (wheels install unzipped), so its folder is a real path.
    return Path(str(files("migrations")))


def alembic_config(database_url: str | None = None) -> Config:
    config = Config()
    config.set_main_option("script_location", str(migrations_dir()))
    if database_url:
        config.attributes["database_url"] = database_url
    return config


def upgrade(database_url: str | None = None, revision: str = "head") -> None:
    command.upgrade(alembic_config(database_url), revision)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Apply the database migrations to DATABASE_URL (the release step)."
    )
    parser.add_argument("revision", nargs="?", default="head", help="target (default: head)")
    args = parser.parse_args(argv)
    settings = load_settings_or_exit()
    upgrade(settings.database_url, args.revision)
    return 0


if __name__ == "__main__":
    sys.exit(main())
