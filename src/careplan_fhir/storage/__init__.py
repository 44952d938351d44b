"""Persistence: SQLModel tables, Alembic migrations, the repository and search."""
