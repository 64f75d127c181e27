"""The schema comes from Alembic only, and the migrations match the models."""

from alembic import command
from sqlalchemy import create_engine, inspect

from app.migrate import alembic_config


def test_upgrade_head_then_check_then_downgrade(tmp_path):
    url = f"sqlite:///{tmp_path / 'm.db'}"
    config = alembic_config(url)
    command.upgrade(config, "head")
    command.check(config)  # raises if the models and the migrations disagree
    assert {"users", "notifications"} <= set(inspect(create_engine(url)).get_table_names())
    command.downgrade(config, "base")
    assert "users" not in inspect(create_engine(url)).get_table_names()
