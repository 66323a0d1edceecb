"""Every store runs the same contract suite: add a factory here and all of it applies."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from runcontrol_server.domain import RunManager, RunStore
from runcontrol_server.domain.limits import DEFAULT_STORE_LIMITS, StoreLimits
from runcontrol_server.stores import InMemoryRunStore
from runcontrol_server.stores.postgres import PostgresRunStore

# The contract fixtures keep this many change sets, so tests can provoke compaction.
HISTORY = 64

StoreFactory = Callable[[pytest.FixtureRequest], Awaitable[RunStore]]


async def _memory(request: pytest.FixtureRequest) -> RunStore:
    return InMemoryRunStore(history_limit=HISTORY, limits=request.getfixturevalue("store_limits"))


async def _postgres(request: pytest.FixtureRequest) -> RunStore:
    # A fresh database per test on the session's throwaway cluster.
    url: str = request.getfixturevalue("pg_url")
    limits = request.getfixturevalue("store_limits")
    store = PostgresRunStore(url, history_limit=HISTORY, pool_size=8, limits=limits)
    await store.open()
    return store


STORE_FACTORIES: dict[str, StoreFactory] = {"memory": _memory, "postgres": _postgres}


@pytest.fixture
def store_limits() -> StoreLimits:
    """The limits every store is built with; a test module overrides this fixture."""
    return DEFAULT_STORE_LIMITS


@pytest.fixture(params=sorted(STORE_FACTORIES))
async def store(request: pytest.FixtureRequest) -> AsyncIterator[RunStore]:
    created = await STORE_FACTORIES[request.param](request)
    try:
        yield created
    finally:
        await created.close()


@pytest.fixture
def manager(store: RunStore) -> RunManager:
    return RunManager(store, history_size=HISTORY)
