"""A watcher-holding process for the watcher-scale section: `python -m bench.watchers`.

Driven like `bench.load` (one JSON command per stdin line, one JSON answer line). It
holds many WatchRuns streams open on one server, spread over channels of at most
`STREAMS_PER_CHANNEL` streams each (every channel its own connection: HTTP/2 stacks
cap concurrent streams per connection, 100 in some), and stamps every message each
stream receives with `time.monotonic()` (CLOCK_MONOTONIC: comparable across the
processes of one machine), so the driver can tell when a change reached every watcher.

Commands (`op`): `open` (open groups of streams, wait until each received its first
message: registered), `await_count` (wait until every receiving stream got N messages),
`collect` (latencies against the changes' send times), `reset`, `close`, `info`.
Every wait is bounded by a deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from typing import Any

import grpc
from google.protobuf import duration_pb2

from runcontrol.v1 import run_control_pb2 as pb
from runcontrol.v1 import run_pb2
from runcontrol_server import eventloop

from .common import serve_commands
from .load import PREFIX, loop_name

STREAMS_PER_CHANNEL = 100
# Streams started at once while opening: the server registers each (a snapshot of an
# empty thread and the initial-set marker); more at once only queues up.
OPEN_CONCURRENCY = 200


def watch_request(thread_id: str, statuses: list[int]) -> bytes:
    """send_initial on an empty thread (the first message says the watcher is
    registered); no progress messages during the run."""
    return pb.WatchRunsRequest(
        thread_id=thread_id,
        statuses=[run_pb2.RunStatus.ValueType(s) for s in statuses],
        send_initial=True,
        progress_interval=duration_pb2.Duration(seconds=3600),
    ).SerializeToString()


class _Side:
    """The streams this process holds on one server."""

    def __init__(self) -> None:
        self.channels: list[grpc.aio.Channel] = []
        self.calls: list[Any] = []
        self.tasks: list[asyncio.Task[None]] = []
        # Per receiving stream: arrival times of its messages after the first.
        self.arrivals: list[list[float]] = []
        self.errors: list[str] = []
        # count -> receiving streams that have at least `count` messages; and the
        # events of `await_count` waiting for a count to reach every stream.
        self.reached: dict[int, int] = {}
        self.waiting: dict[int, asyncio.Event] = {}


class Holder:
    def __init__(self) -> None:
        self._sides: dict[str, _Side] = {}

    async def info(self) -> dict[str, Any]:
        return {"loop": loop_name(), "pid": os.getpid()}

    async def open(
        self, target: str, service: str, groups: list[dict[str, Any]], budget: float
    ) -> dict[str, Any]:
        """Open every group's streams on `target` (`service` "subject" or "echo"):
        {thread, count, statuses, receiving, distinct} (`distinct`: each stream on a
        thread of its own, `thread-<i>`). Returns once all are registered (their first
        message arrived) or `budget` seconds passed."""
        if target in self._sides:
            raise RuntimeError(f"streams on {target} are open already")
        side = self._sides[target] = _Side()
        specs: list[tuple[bytes, bool]] = []
        for group in groups:
            statuses, receiving = group.get("statuses", []), bool(group["receiving"])
            count, thread = int(group["count"]), group["thread"]
            if group.get("distinct"):
                specs += [
                    (watch_request(f"{thread}-{i}", statuses), receiving) for i in range(count)
                ]
            else:
                specs += [(watch_request(thread, statuses), receiving)] * count
        n_channels = max(1, -(-len(specs) // STREAMS_PER_CHANNEL))
        side.channels = [
            grpc.aio.insecure_channel(target, options=[("grpc.use_local_subchannel_pool", 1)])
            for _ in range(n_channels)
        ]
        method = PREFIX[service] + "WatchRuns"
        stubs: list[grpc.aio.UnaryStreamMultiCallable[bytes, bytes]] = [
            channel.unary_stream(method) for channel in side.channels
        ]
        started = time.monotonic()
        deadline = started + budget
        gate = asyncio.Semaphore(OPEN_CONCURRENCY)
        ready = asyncio.Event()
        registered = 0

        async def stream(index: int, request: bytes, receiving: bool) -> None:
            nonlocal registered
            async with gate:
                call = stubs[index % n_channels](request)
                side.calls.append(call)
                first = await call.read()
            if first is grpc.aio.EOF:
                side.errors.append("stream ended before its first message")
                return
            registered += 1
            if registered == len(specs):
                ready.set()
            if not receiving:
                await call.read()  # nothing is expected; returns when the stream ends
                return
            arrivals: list[float] = []
            side.arrivals.append(arrivals)
            reached, waiting = side.reached, side.waiting
            monotonic = time.monotonic
            read = call.read
            while True:
                message = await read()
                if message is grpc.aio.EOF:
                    return
                arrivals.append(monotonic())
                count = len(arrivals)
                reached[count] = reached.get(count, 0) + 1
                event = waiting.get(count)
                if event is not None and reached[count] >= len(side.arrivals):
                    event.set()

        async def guarded(index: int, request: bytes, receiving: bool) -> None:
            try:
                await stream(index, request, receiving)
            except grpc.aio.AioRpcError as exc:
                if exc.code() is not grpc.StatusCode.CANCELLED:
                    side.errors.append(f"{exc.code().name}: {exc.details()}")
                    ready.set()  # a failure ends the wait: the answer reports it

        side.tasks = [
            asyncio.ensure_future(guarded(i, request, receiving))
            for i, (request, receiving) in enumerate(specs)
        ]
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(ready.wait(), max(0.0, deadline - time.monotonic()))
        return {
            "opened": registered,
            "expected": len(specs),
            "receiving": sum(1 for _, receiving in specs if receiving),
            "channels": n_channels,
            "seconds": time.monotonic() - started,
            "errors": len(side.errors),
            "first_error": side.errors[0] if side.errors else None,
        }

    async def await_count(self, target: str, count: int, budget: float) -> dict[str, Any]:
        """Wait (at most `budget` s) until every receiving stream has `count` messages."""
        side = self._sides[target]
        streams = len(side.arrivals)
        if side.reached.get(count, 0) < streams:
            event = side.waiting[count] = asyncio.Event()
            try:
                await asyncio.wait_for(event.wait(), budget)
            except TimeoutError:
                pass
            finally:
                del side.waiting[count]
        reached = side.reached.get(count, 0) if count else streams
        return {"reached": reached, "streams": streams, "complete": reached >= streams}

    async def collect(self, target: str, send_times: list[float], skip: int = 0) -> dict[str, Any]:
        """Latency (ms) of every delivery against its change's send time (message j of
        each stream belongs to change j; the first `skip` changes left out), and per
        change the last arrival."""
        side = self._sides[target]
        latencies: list[float] = []
        last = [0.0] * len(send_times)
        first_arrival = None
        for arrivals in side.arrivals:
            for j, (arrived, sent) in enumerate(zip(arrivals, send_times, strict=False)):
                if j >= skip:
                    latencies.append(round((arrived - sent) * 1e3, 3))
                if arrived > last[j]:
                    last[j] = arrived
                if first_arrival is None or arrived < first_arrival:
                    first_arrival = arrived
        return {
            "latencies_ms": latencies,
            "last_arrival": last,
            "first_arrival": first_arrival,
            "extra": sum(max(0, len(a) - len(send_times)) for a in side.arrivals),
        }

    async def reset(self, target: str) -> dict[str, Any]:
        """Forget the arrivals so far (the next change is message 1 again)."""
        side = self._sides[target]
        for arrivals in side.arrivals:
            arrivals.clear()
        side.reached.clear()
        return {"streams": len(side.arrivals)}

    async def close(self, target: str | None = None) -> dict[str, Any]:
        """Cancel the streams on `target` (all targets when None) and close channels."""
        targets = list(self._sides) if target is None else [target]
        closed = 0
        for name in targets:
            side = self._sides.pop(name, None)
            if side is None:
                continue
            for call in side.calls:
                call.cancel()
            for task in side.tasks:
                task.cancel()
            await asyncio.gather(*side.tasks, return_exceptions=True)
            for channel in side.channels:
                await channel.close()
            closed += len(side.calls)
        return {"closed": closed}


def main() -> int:
    eventloop.run(serve_commands(Holder()), "auto")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
