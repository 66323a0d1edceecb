"""Every store runs the same contract suite: add a factory here and all of it applies."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from runcontrol_server.domain import RunManager, RunStore
from runcontrol_server.stores import InMemoryRunStore

StoreFactory = Callable[[], Awaitable[RunStore]]


async def _memory() -> RunStore:
    return InMemoryRunStore(history_limit=64)


STORE_FACTORIES: dict[str, StoreFactory] = {"memory": _memory}


@pytest.fixture(params=sorted(STORE_FACTORIES))
async def store(request: pytest.FixtureRequest) -> AsyncIterator[RunStore]:
    created = await STORE_FACTORIES[request.param]()
    try:
        yield created
    finally:
        await created.close()


@pytest.fixture
def manager(store: RunStore) -> RunManager:
    return RunManager(store)
