"""Alembic environment: migrations run with the node's own engine settings."""

from __future__ import annotations

from alembic import context

from dicom_node.db.models import Base
from dicom_node.db.session import make_engine

config = context.config
url = config.get_main_option("sqlalchemy.url")
assert url is not None  # noqa: S101 - set by dicom_node.db.migrate.alembic_config

engine = make_engine(url)
with engine.connect() as connection:
    context.configure(
        connection=connection,
        target_metadata=Base.metadata,
        render_as_batch=engine.dialect.name == "sqlite",
    )
    with context.begin_transaction():
        context.run_migrations()
engine.dispose()
