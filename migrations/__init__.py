"""Alembic's scripts, shipped as a package so an installed wheel can migrate (`offload-migrate`).

`app.migrate` finds this folder through the import system, never through the source tree.
"""
