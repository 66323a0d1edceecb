"""The PostgreSQL store (needs the `postgres` extra: psycopg 3 and psycopg_pool)."""

from .schema import LATEST_VERSION, SchemaTooNew
from .store import PostgresRunStore

__all__ = ["LATEST_VERSION", "PostgresRunStore", "SchemaTooNew"]
