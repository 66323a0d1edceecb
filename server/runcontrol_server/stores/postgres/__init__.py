"""The PostgreSQL store (needs the `postgres` extra: psycopg 3 and psycopg_pool)."""

from .embedded import EmbeddedPostgresRunStore
from .schema import LATEST_VERSION, SchemaTooNew
from .store import PostgresRunStore

__all__ = ["LATEST_VERSION", "EmbeddedPostgresRunStore", "PostgresRunStore", "SchemaTooNew"]
