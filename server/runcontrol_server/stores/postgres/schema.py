"""Schema migrations: versioned SQL files applied in order, once, at start.

`migrations/NNNN_name.sql` files are applied in number order, each in its own
transaction together with its row in `rc_schema_version`. Replicas starting at the
same time serialise on a transaction-level advisory lock, so each file runs once. A
database whose schema is newer than this code knows is refused with a clear message
(a rolled-back replica must not write into a schema it does not understand).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import resources

import psycopg

from ...domain.errors import StoreIncompatible

# pg_advisory_xact_lock key for migrations: any constant unlikely to clash ("rcschema").
_MIGRATION_LOCK = 0x7263_7363_6865_6D61
_FILE_NAME = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")


class SchemaTooNew(StoreIncompatible):
    """The database was migrated by a newer runcontrol than this one."""


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    sql: str


def migrations() -> list[Migration]:
    """Every migration shipped with this package, in version order."""
    found: list[Migration] = []
    for entry in resources.files(__package__).joinpath("migrations").iterdir():
        match = _FILE_NAME.match(entry.name)
        if match:
            found.append(Migration(int(match.group(1)), entry.name, entry.read_text("utf-8")))
    found.sort(key=lambda m: m.version)
    versions = [m.version for m in found]
    if versions != list(range(1, len(found) + 1)):
        raise RuntimeError(f"migrations must be numbered 1..n without gaps, found {versions}")
    return found


LATEST_VERSION = len(migrations())


async def migrate(conn: psycopg.AsyncConnection[object]) -> int:
    """Bring the schema to `LATEST_VERSION`; returns the version found before.

    Raises SchemaTooNew when the database is ahead of this code.
    """
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK,))
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS rc_schema_version ("
            " version integer PRIMARY KEY,"
            " name text NOT NULL,"
            " applied_at timestamptz NOT NULL DEFAULT clock_timestamp())"
        )
        cursor = await conn.execute("SELECT coalesce(max(version), 0) FROM rc_schema_version")
        row = await cursor.fetchone()
        current = int(row[0]) if row else 0  # type: ignore[index]
        if current > LATEST_VERSION:
            raise SchemaTooNew(
                f"the database schema is at version {current}, but this runcontrol knows "
                f"versions up to {LATEST_VERSION}: upgrade runcontrol (or point it at "
                "another database); it will not write into a schema it does not know"
            )
        for migration in migrations()[current:]:
            await conn.execute(migration.sql.encode())
            await conn.execute(
                "INSERT INTO rc_schema_version (version, name) VALUES (%s, %s)",
                (migration.version, migration.name),
            )
    return current
