"""WatchRuns over Connect: a server stream of `application/connect+json` envelopes that
sees live changes in order, ends with the error table's answer, frees its watcher when
the client goes away, and is told where to resume when the server stops."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from _http import CONNECT_STREAM_JSON, Envelopes, Serving, envelope, error_info, serving
from _streams import until


@pytest.fixture
async def http() -> AsyncIterator[Serving]:
    async with serving() as running:
        yield running


def watch_request(**fields: Any) -> bytes:
    return envelope(json.dumps(fields).encode())


def event(message: dict[str, Any]) -> tuple[str, str, str]:
    """(type, run status, previous status) of a message's only event."""
    (only,) = message["events"]
    return only["type"], only["run"]["status"], only.get("prevStatus", "")


async def test_watch_sees_live_changes_in_order(http: Serving) -> None:
    request = watch_request(threadId="w", sendInitial=True)
    async with http.client.stream(
        "POST", http.url("WatchRuns"), content=request, headers=CONNECT_STREAM_JSON
    ) as response:
        assert response.status_code == 200
        assert response.headers["content-type"] == "application/connect+json"
        messages = Envelopes(response)
        # The end of the (empty) initial set: from here on the watch is registered.
        assert (await messages.next_json()).get("endOfInitialSet") is True

        run = (await http.call("CreateRun", {"threadId": "w"})).json()["run"]
        for status in ("RUN_STATUS_RUNNING", "RUN_STATUS_SUCCESS"):
            moved = await http.call(
                "SetRunStatus", {"runId": run["runId"], "status": status, "workerId": "w1"}
            )
            assert moved.status_code == 200, moved.text

        seen = [await messages.next_json() for _ in range(3)]
    assert [event(m) for m in seen] == [
        ("EVENT_TYPE_ADDED", "RUN_STATUS_PENDING", ""),
        ("EVENT_TYPE_MODIFIED", "RUN_STATUS_RUNNING", "RUN_STATUS_PENDING"),
        ("EVENT_TYPE_MODIFIED", "RUN_STATUS_SUCCESS", "RUN_STATUS_RUNNING"),
    ]
    assert [m["revision"] for m in seen] == ["1", "2", "3"]
    assert {m["events"][0]["run"]["runId"] for m in seen} == {run["runId"]}

    # The client went away: the server ends the handler and releases its watcher.
    hub = http.server.manager.watch_hub
    await until(lambda: hub.count == 0, "the HTTP watcher is released")


async def test_a_refused_watch_ends_the_stream_with_the_error_table_s_answer(
    http: Serving,
) -> None:
    async with http.client.stream(
        "POST",
        http.url("WatchRuns"),
        content=watch_request(startRevision=-1),
        headers=CONNECT_STREAM_JSON,
    ) as response:
        assert response.status_code == 200  # a stream's status is in its last message
        end = await Envelopes(response).end_json()
    assert end["error"]["code"] == "invalid_argument"
    info = error_info(end["error"])
    assert info.reason == "INVALID_ARGUMENT"
    assert dict(info.metadata) == {"field": "start_revision"}


async def test_stopping_the_server_tells_the_stream_where_to_resume() -> None:
    async with serving() as http:
        request = watch_request(sendInitial=True)
        async with http.client.stream(
            "POST", http.url("WatchRuns"), content=request, headers=CONNECT_STREAM_JSON
        ) as response:
            messages = Envelopes(response)
            assert (await messages.next_json()).get("endOfInitialSet") is True
            # A graceful stop: the stream is ended with SHUTTING_DOWN, not cut off.
            stopping = asyncio.ensure_future(http.server.stop(grace=10))
            end = await messages.end_json()
            await stopping
    assert end["error"]["code"] == "unavailable"
    info = error_info(end["error"])
    assert info.reason == "SHUTTING_DOWN"
    assert info.metadata["resume_revision"] == "1"
