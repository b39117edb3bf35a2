"""Alembic migrations of the registry's schema (run by ``ajr_supervisor.registry.db.migrate``)."""
