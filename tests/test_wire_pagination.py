"""ListRuns order and keyset pagination over the wire."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

from runcontrol.testing import InProcessServer, serve_in_process
from runcontrol.v1 import run_control_pb2 as pb
from runcontrol.v1 import run_pb2
from runcontrol_server.domain.clock import MonotonicClock
from runcontrol_server.stores.memory import InMemoryRunStore

RunControlAsyncStub = Any
ENQUEUE = run_pb2.MULTITASK_STRATEGY_ENQUEUE


async def create(stub: RunControlAsyncStub, thread_id: str) -> Any:
    request = pb.CreateRunRequest(thread_id=thread_id, multitask_strategy=ENQUEUE)
    return (await stub.CreateRun(request)).run


async def page_all(stub: RunControlAsyncStub, page_size: int, **filters: Any) -> list[list[Any]]:
    pages: list[list[Any]] = []
    token = ""
    while True:
        response = await stub.ListRuns(
            pb.ListRunsRequest(page_size=page_size, page_token=token, **filters)
        )
        pages.append(list(response.runs))
        token = response.next_page_token
        if not token:
            return pages


def sort_key(run: Any) -> tuple[datetime, int]:
    return (run.created_at.ToDatetime(), run.create_revision)


async def test_newest_first_with_ties_broken_by_revision() -> None:
    # A frozen clock makes every created_at equal, so only the revision orders them.
    frozen = datetime(2030, 1, 1, tzinfo=UTC)
    store = InMemoryRunStore(clock=MonotonicClock(lambda: frozen))
    async with serve_in_process(store=store) as server:
        created = [await create(server.stub, f"t{i % 3}") for i in range(12)]
        assert len({r.created_at.ToDatetime() for r in created}) == 1
        listed = await server.stub.ListRuns(pb.ListRunsRequest())
        assert [r.create_revision for r in listed.runs] == sorted(
            (r.create_revision for r in created), reverse=True
        )
        # Paging over the ties yields the same order.
        pages = await page_all(server.stub, 5)
        assert [r.run_id for page in pages for r in page] == [r.run_id for r in listed.runs]


async def test_newest_first_by_created_at(stub: RunControlAsyncStub) -> None:
    created = [await create(stub, "t") for _ in range(5)]
    listed = (await stub.ListRuns(pb.ListRunsRequest())).runs
    assert [r.run_id for r in listed] == [r.run_id for r in reversed(created)]
    assert [sort_key(r) for r in listed] == sorted((sort_key(r) for r in listed), reverse=True)


async def test_pages_cover_every_run_once(stub: RunControlAsyncStub) -> None:
    created = [await create(stub, f"t{i % 4}") for i in range(23)]
    pages = await page_all(stub, 7)
    assert [len(p) for p in pages] == [7, 7, 7, 2]
    ids = [r.run_id for page in pages for r in page]
    assert ids == [r.run_id for r in reversed(created)]


async def test_exact_multiple_of_page_size_ends_with_an_empty_token(
    stub: RunControlAsyncStub,
) -> None:
    for _ in range(14):
        await create(stub, "t")
    pages = await page_all(stub, 7)
    # The store looks one run ahead, so no trailing empty page is needed.
    assert [len(p) for p in pages] == [7, 7]


async def test_default_page_size_is_fifty(stub: RunControlAsyncStub) -> None:
    for _ in range(51):
        await create(stub, "t")
    first = await stub.ListRuns(pb.ListRunsRequest())
    assert len(first.runs) == 50
    assert first.next_page_token
    rest = await stub.ListRuns(pb.ListRunsRequest(page_token=first.next_page_token))
    assert len(rest.runs) == 1
    assert rest.next_page_token == ""


async def test_filtered_paging_and_page_size_may_change_between_pages(
    stub: RunControlAsyncStub,
) -> None:
    for i in range(30):
        run = await create(stub, f"t{i % 2}")
        if i % 3 == 0:
            await stub.CancelRun(pb.CancelRunRequest(run_id=run.run_id))
    everything = (await stub.ListRuns(pb.ListRunsRequest(page_size=1000))).runs
    statuses = [run_pb2.RUN_STATUS_PENDING]
    expected = [r.run_id for r in everything if r.thread_id == "t0" and r.status in statuses]

    first = await stub.ListRuns(pb.ListRunsRequest(thread_id="t0", statuses=statuses, page_size=2))
    # Status order in the filter does not matter for the token, only the set.
    rest = await stub.ListRuns(
        pb.ListRunsRequest(
            thread_id="t0",
            statuses=statuses * 2,
            page_size=100,
            page_token=first.next_page_token,
        )
    )
    assert [r.run_id for r in [*first.runs, *rest.runs]] == expected


async def test_paging_is_exactly_once_under_concurrent_creates(server: InProcessServer) -> None:
    stub = server.stub
    for i in range(40):
        await create(stub, f"t{i % 5}")

    seen: list[str] = []
    first_revision = None
    token = ""
    made = 0
    for _ in range(100):  # bounded: 40 runs in pages of 7
        # Creates race the page read, and more land between every two pages.
        response, *_ = await asyncio.gather(
            stub.ListRuns(pb.ListRunsRequest(page_size=7, page_token=token)),
            create(stub, f"t{made % 5}"),
            create(stub, "w"),
        )
        made += 2
        if first_revision is None:
            first_revision = response.revision
        seen.extend(r.run_id for r in response.runs)
        await create(stub, f"t{made % 5}")
        made += 1
        token = response.next_page_token
        if not token:
            break
    assert token == "", "paging did not end"

    final = (await stub.ListRuns(pb.ListRunsRequest(page_size=1000))).runs
    assert len(final) == 40 + made
    existing_at_first_page = {r.run_id for r in final if r.create_revision <= first_revision}
    assert len(seen) == len(set(seen)), "a run appeared twice"
    assert set(seen) >= existing_at_first_page, "a run that existed was skipped"
    # Runs created after the first page was read never show up on later pages.
    assert set(seen) == existing_at_first_page


async def test_paging_survives_deletes_between_pages(stub: RunControlAsyncStub) -> None:
    created = [await create(stub, f"t{i}") for i in range(20)]
    first = await stub.ListRuns(pb.ListRunsRequest(page_size=5))
    # Delete the run the cursor points at and a few not yet read.
    for run in (created[15], created[10], created[3]):
        await stub.CancelRun(pb.CancelRunRequest(run_id=run.run_id))
        await stub.DeleteRun(pb.DeleteRunRequest(run_id=run.run_id))
    rest = [r for page in await page_all_from(stub, first.next_page_token, 5) for r in page]
    deleted = {created[i].run_id for i in (15, 10, 3)}
    expected = [r.run_id for r in reversed(created[:15]) if r.run_id not in deleted]
    assert [r.run_id for r in rest] == expected


async def page_all_from(stub: RunControlAsyncStub, token: str, page_size: int) -> list[list[Any]]:
    pages: list[list[Any]] = []
    while token:
        response = await stub.ListRuns(pb.ListRunsRequest(page_size=page_size, page_token=token))
        pages.append(list(response.runs))
        token = response.next_page_token
    return pages
