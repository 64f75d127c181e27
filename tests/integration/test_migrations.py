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


def test_an_address_is_unique_through_its_key_alone(tmp_path):
    # email_key (the case-folded address) is unique, so a unique constraint on `email` too
    # never refused anything more and cost every registration one more index insert.
    url = f"sqlite:///{tmp_path / 'm.db'}"
    command.upgrade(alembic_config(url), "0008")
    engine = create_engine(url)
    with engine.begin() as connection:
        connection.exec_driver_sql(
            "INSERT INTO users (id, name, email, email_key, phone, created_at, sms_code_attempts)"
            " VALUES ('u1', 'Ann', 'ann@example.com', 'ann@example.com', '+16502530000',"
            " '2026-11-28 00:00:00.000000', 0)"
        )
    command.upgrade(alembic_config(url), "head")

    schema = inspect(engine)
    unique_columns = [c["column_names"] for c in schema.get_unique_constraints("users")] + [
        i["column_names"] for i in schema.get_indexes("users") if i["unique"]
    ]
    assert ["email"] not in unique_columns
    assert ["email_key"] in unique_columns and ["phone"] in unique_columns
    with engine.connect() as connection:  # the rebuild kept the rows
        assert connection.exec_driver_sql("SELECT email FROM users").scalars().all() == [
            "ann@example.com"
        ]
    engine.dispose()
