"""Alembic revisions, oldest first (``0001_*`` creates the schema)."""
