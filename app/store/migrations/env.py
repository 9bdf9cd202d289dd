"""Alembic environment: runs on the connection the Store hands over (never at import)."""
from alembic import context
from sqlmodel import SQLModel

import app.store  # noqa: F401  (registers the tables)

connection = context.config.attributes["connection"]
context.configure(connection=connection, target_metadata=SQLModel.metadata,
                  render_as_batch=connection.dialect.name == "sqlite")
context.run_migrations()
