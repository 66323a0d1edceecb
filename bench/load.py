"""The load generator: a separate process driven by JSON lines on stdin.

`python -m bench.load` reads one JSON command per line and answers one JSON line on
stdout. The same client code drives runcontrol ("subject") and the echo baseline
("echo"): requests are the same pre-built bytes and answers are taken as raw bytes
(identity serializers), so client-side work is identical and only the server differs.

Commands (`op`): `info` (its event loop), `seed` (subject only: create the runs
GetRun/ListRuns read and measure real message sizes), `unary`, `fanout`, `changes` (the
watcher-scale section's changes, stamped), `watch_cycles`, `watch_latency` (subject only:
one change at a time, from a writer replica to a watcher replica), `quit`. Every loop is bounded
by a count and by a deadline (`budget`, seconds).
"""

from __future__ import annotations

import asyncio
import itertools
import math
import os
import random
import time
from collections.abc import Callable
from typing import Any

import grpc
from google.protobuf import duration_pb2, struct_pb2

from runcontrol.v1 import run_control_pb2 as pb
from runcontrol.v1 import run_pb2
from runcontrol_server import eventloop

from .common import load_summary, median, percentile, serve_commands

PREFIX = {
    "subject": "/runcontrol.v1.RunControl/",
    "echo": "/bench.Echo/",
    "echo_parse": "/bench.Echo/",  # the echo that parses each request (`--parse`)
}
# The fan-out change: on runcontrol a CreateRun on the watched thread; on the echo a
# Publish of one same-sized payload to every stream.
CHANGE_METHOD = {"subject": "CreateRun", "echo": "Publish"}
UNARY_METHOD = {"create": "CreateRun", "get": "GetRun", "list": "ListRuns"}
GET_SEEDS = 1000
# Stored runs GetRun cycles over on a `bench.growth` server.
GROWTH_SAMPLE = 20_000
LIST_THREAD = "bench-list"
LIST_SEEDS = 150
LIST_PAGE = 100
STREAMS_PER_CHANNEL = 100
CALL_TIMEOUT = 30.0
MAX_ERRORS = 100
Stream = grpc.aio.UnaryStreamMultiCallable[bytes, bytes]
_METADATA = struct_pb2.Struct()
_METADATA.update({"source": "bench", "attempt": 1})


def create_request(
    thread_id: str,
    strategy: run_pb2.MultitaskStrategy.ValueType = run_pb2.MULTITASK_STRATEGY_UNSPECIFIED,
) -> bytes:
    """A realistic CreateRun: assistant, small metadata; the thread id sets the size."""
    request = pb.CreateRunRequest(
        thread_id=thread_id, assistant_id="bench-assistant", multitask_strategy=strategy
    )
    request.metadata.CopyFrom(_METADATA)
    return request.SerializeToString()


def watch_request(thread_id: str) -> bytes:
    # send_initial on an empty thread: the first message (end of initial set) tells the
    # client the watcher is registered. No progress messages during a bench.
    request = pb.WatchRunsRequest(
        thread_id=thread_id,
        send_initial=True,
        progress_interval=duration_pb2.Duration(seconds=3600),
    )
    return request.SerializeToString()


class Load:
    def __init__(self) -> None:
        self._channels: dict[str, grpc.aio.Channel] = {}
        self._ids = itertools.count()
        self._tag = f"{os.getpid() % 100000:05d}"
        self._get_requests: list[bytes] = []
        # GetRun requests per target when set (`growth_targets`), else `_get_requests`.
        self._get_by_target: dict[str, list[bytes]] = {}
        self._list_request = pb.ListRunsRequest(
            thread_id=LIST_THREAD, page_size=LIST_PAGE
        ).SerializeToString()

    def channel(self, target: str) -> grpc.aio.Channel:
        if target not in self._channels:
            self._channels[target] = grpc.aio.insecure_channel(target)
        return self._channels[target]

    async def close(self) -> None:
        for channel in self._channels.values():
            await channel.close()

    def _thread(self, kind: str) -> str:
        # Fixed width: every request of a kind has the same size.
        return f"bench-{kind}-{self._tag}-{next(self._ids):010d}"

    def _unary(self, target: str, service: str, method: str) -> Any:
        return self.channel(target).unary_unary(PREFIX[service] + method)

    def requests(self, method: str, target: str = "") -> Callable[[], bytes]:
        if method == "create":
            return lambda: create_request(self._thread("c"))
        if method == "get":
            cycle = itertools.cycle(self._get_by_target.get(target) or self._get_requests)
            return lambda: next(cycle)
        if method == "list":
            return lambda: self._list_request
        raise ValueError(f"unknown method {method}")

    # -- commands ----------------------------------------------------------------------

    async def info(self) -> dict[str, Any]:
        return {"loop": loop_name(), "pid": os.getpid()}

    async def seed(self, target: str) -> dict[str, Any]:
        """Create what GetRun/ListRuns read; measure the real request/answer sizes."""
        create = self._unary(target, "subject", "CreateRun")
        get = self._unary(target, "subject", "GetRun")
        sizes: dict[str, int] = {}
        self._get_requests = []
        for _ in range(GET_SEEDS):
            raw = await create(create_request(self._thread("c")))
            run_id = pb.CreateRunResponse.FromString(raw).run.run_id
            self._get_requests.append(pb.GetRunRequest(run_id=run_id).SerializeToString())
        # GetRun on this target reads these (several seeded servers: each its own).
        self._get_by_target[target] = self._get_requests
        sizes["CreateRun"] = len(await create(create_request(self._thread("c"))))
        sizes["GetRun"] = len(await get(self._get_requests[0]))
        interrupt = run_pb2.MULTITASK_STRATEGY_INTERRUPT
        for _ in range(LIST_SEEDS):
            await create(create_request(LIST_THREAD, interrupt))
        list_runs = self._unary(target, "subject", "ListRuns")
        sizes["ListRuns"] = len(await list_runs(self._list_request))
        # One watcher, two changes: the second is the steady-state event message.
        thread = self._thread("f")
        watch: Stream = self.channel(target).unary_stream(PREFIX["subject"] + "WatchRuns")
        call = watch(watch_request(thread))
        try:
            await asyncio.wait_for(call.read(), CALL_TIMEOUT)
            await create(create_request(thread, interrupt))
            sizes["Publish"] = len(await create(create_request(thread, interrupt)))
            first = await asyncio.wait_for(call.read(), CALL_TIMEOUT)
            second = await asyncio.wait_for(call.read(), CALL_TIMEOUT)
            assert isinstance(first, bytes) and isinstance(second, bytes)
            sizes["WatchEvent"] = len(second)
            watch_available = True
        except grpc.aio.AioRpcError as exc:
            if exc.code() is not grpc.StatusCode.UNIMPLEMENTED:
                raise
            sizes["Publish"] = sizes["CreateRun"]
            sizes["WatchEvent"] = 2 * sizes["GetRun"]
            watch_available = False
        finally:
            call.cancel()
        requests = {
            "CreateRun": len(create_request(self._thread("c"))),
            "GetRun": len(self._get_requests[0]),
            "ListRuns": len(self._list_request),
        }
        return {"sizes": sizes, "request_sizes": requests, "watch_available": watch_available}

    async def unary(
        self,
        target: str,
        service: str,
        method: str,
        concurrency: int,
        duration: float,
        max_calls: int,
    ) -> dict[str, Any]:
        stub = self._unary(target, service, UNARY_METHOD[method])
        next_request = self.requests(method, target)
        latencies: list[float] = []
        errors: list[str] = []
        calls = 0
        start = time.perf_counter()
        deadline = start + duration

        async def worker() -> None:
            nonlocal calls
            while calls < max_calls and time.perf_counter() < deadline:
                calls += 1
                request = next_request()
                began = time.perf_counter_ns()
                try:
                    await stub(request, timeout=CALL_TIMEOUT)
                except grpc.aio.AioRpcError as exc:
                    errors.append(f"{exc.code().name}: {exc.details()}")
                    if len(errors) >= MAX_ERRORS:
                        return
                    continue
                latencies.append((time.perf_counter_ns() - began) / 1e6)

        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return load_summary(latencies, errors, time.perf_counter() - start)

    async def fanout(
        self, target: str, service: str, watchers: int, changes: int, budget: float
    ) -> dict[str, Any]:
        """`watchers` streams on one thread; `changes` changes; every delivery counted."""
        thread = self._thread("f")
        request = watch_request(thread)
        change_request = create_request(thread, run_pb2.MULTITASK_STRATEGY_INTERRUPT)
        n_channels = math.ceil(watchers / STREAMS_PER_CHANNEL)
        # Local subchannel pools: each channel gets its own connection.
        channels = [
            grpc.aio.insecure_channel(target, options=[("grpc.use_local_subchannel_pool", 1)])
            for _ in range(n_channels)
        ]
        change = self._unary(target, service, CHANGE_METHOD[service])
        deadline = time.perf_counter() + budget
        ready = 0
        all_ready = asyncio.Event()
        received = [0] * watchers
        last_at = [0.0] * watchers
        calls: list[Any] = []

        async def watch(index: int) -> None:
            nonlocal ready
            stream: Stream = channels[index % n_channels].unary_stream(
                PREFIX[service] + "WatchRuns"
            )
            call = stream(request)
            calls.append(call)
            await call.read()  # the ready marker (end of the empty initial set)
            ready += 1
            if ready == watchers:
                all_ready.set()
            while received[index] < changes:
                message = await call.read()
                if message is grpc.aio.EOF:
                    return
                received[index] += 1
                last_at[index] = time.perf_counter()

        tasks = [asyncio.ensure_future(watch(i)) for i in range(watchers)]
        try:
            waiter = asyncio.ensure_future(all_ready.wait())
            done, _ = await asyncio.wait(
                [waiter, *tasks],
                timeout=max(0.0, deadline - time.perf_counter()),
                return_when=asyncio.FIRST_COMPLETED,
            )
            waiter.cancel()
            for task in done:
                if task is not waiter and task.exception() is not None:
                    exc = task.exception()
                    if isinstance(exc, grpc.aio.AioRpcError):
                        return {"unavailable": f"{exc.code().name}: {exc.details()}"}
                    raise exc  # type: ignore[misc]
            if not all_ready.is_set():
                return {"unavailable": f"only {ready}/{watchers} watchers ready in time"}
            start = time.perf_counter()
            for _ in range(changes):
                await change(change_request, timeout=CALL_TIMEOUT)
            changes_done = time.perf_counter()
            await asyncio.wait(tasks, timeout=max(0.0, deadline - time.perf_counter()))
            total = sum(received)
            end = max(last_at) if total else time.perf_counter()
            elapsed = max(end - start, 1e-9)
            return {
                "deliveries": total,
                "expected": watchers * changes,
                "complete": total == watchers * changes,
                "elapsed": elapsed,
                "rate": total / elapsed,
                "changes_elapsed": changes_done - start,
            }
        finally:
            for call in calls:
                call.cancel()
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            for channel in channels:
                await channel.close()

    async def growth_target(self, target: str, stored: int) -> dict[str, Any]:
        """GetRun on `target` reads runs spread over all `stored` runs of a `bench.growth`
        server (ids `bench_run_id(i)`, a fixed random sample); answers the sizes of its
        CreateRun and GetRun answers (one run created)."""
        from .growth import bench_run_id

        picks = random.Random(stored).sample(range(stored), min(stored, GROWTH_SAMPLE))
        requests = [pb.GetRunRequest(run_id=bench_run_id(i)).SerializeToString() for i in picks]
        self._get_by_target[target] = requests
        if not self._get_requests:  # what GetRun on the echo cycles over (the same bytes)
            self._get_requests = requests
        create = self._unary(target, "subject", "CreateRun")
        get = self._unary(target, "subject", "GetRun")
        return {
            "CreateRun": len(await create(create_request(self._thread("c")))),
            "GetRun": len(await get(requests[0])),
        }

    async def changes(
        self, target: str, service: str, thread: str, count: int, budget: float
    ) -> dict[str, Any]:
        """`count` changes on `thread`, one after the other (each sent once the previous
        was answered), at most `budget` seconds: CreateRun(INTERRUPT) on runcontrol, a
        Publish keyed by the same thread on the echo. Returns each change's send time
        (`time.monotonic()`, comparable with other processes' stamps)."""
        change = self._unary(target, service, CHANGE_METHOD[service])
        request = create_request(thread, run_pb2.MULTITASK_STRATEGY_INTERRUPT)
        sent: list[float] = []
        answered: list[float] = []
        deadline = time.monotonic() + budget
        while len(sent) < count and time.monotonic() < deadline:
            sent.append(time.monotonic())
            await change(request, timeout=CALL_TIMEOUT)
            answered.append(time.monotonic())
        return {"sent": sent, "answered": answered}

    async def watch_latency(
        self, watch_target: str, write_target: str, events: int, budget: float
    ) -> dict[str, Any]:
        """Delivery latency of one change: a WatchRuns stream on `watch_target`, then
        `events` CreateRuns (INTERRUPT, on the watched thread) sent one after the other
        to `write_target`, each after the previous event arrived. A reader task stamps
        every message as it arrives; latency = arrival - the create's answer (and -
        its send). Bounded by `events` and by `budget` seconds."""
        thread = self._thread("l")
        change_request = create_request(thread, run_pb2.MULTITASK_STRATEGY_INTERRUPT)
        watch: Stream = self.channel(watch_target).unary_stream(PREFIX["subject"] + "WatchRuns")
        create = self._unary(write_target, "subject", "CreateRun")
        deadline = time.perf_counter() + budget
        arrivals: asyncio.Queue[float] = asyncio.Queue()
        call = watch(watch_request(thread))

        async def read() -> None:
            while True:
                message = await call.read()
                if message is grpc.aio.EOF:
                    return
                arrivals.put_nowait(time.perf_counter())

        from_answer: list[float] = []
        from_send: list[float] = []
        missed = 0
        reader: asyncio.Task[None] | None = None
        try:
            await asyncio.wait_for(call.read(), CALL_TIMEOUT)  # registered: initial set
            reader = asyncio.ensure_future(read())
            for _ in range(events):
                left = deadline - time.perf_counter()
                if left <= 0:
                    break
                sent = time.perf_counter()
                await create(change_request, timeout=CALL_TIMEOUT)
                answered = time.perf_counter()
                try:
                    arrived = await asyncio.wait_for(arrivals.get(), min(left, CALL_TIMEOUT))
                except TimeoutError:
                    missed += 1
                    break
                from_answer.append((arrived - answered) * 1e3)
                from_send.append((arrived - sent) * 1e3)
            extra = arrivals.qsize()  # more messages than changes: batching went wrong
        finally:
            call.cancel()
            if reader is not None:
                reader.cancel()
                await asyncio.gather(reader, return_exceptions=True)
        return {
            "events": len(from_answer),
            "missed": missed,
            "extra_messages": extra,
            "p50_ms": median(from_answer),
            "p99_ms": percentile(from_answer, 0.99),
            "max_ms": max(from_answer, default=0.0),
            "send_p50_ms": median(from_send),
            "send_p99_ms": percentile(from_send, 0.99),
        }

    async def watch_cycles(
        self, target: str, service: str, cycles: int, concurrency: int, budget: float
    ) -> dict[str, Any]:
        """Open a watch, wait for its first message, cancel it; `cycles` times."""
        stream: Stream = self.channel(target).unary_stream(PREFIX[service] + "WatchRuns")
        request = watch_request(self._thread("w"))
        started = 0
        failures: list[str] = []
        deadline = time.perf_counter() + budget
        start = time.perf_counter()

        async def worker() -> None:
            nonlocal started
            while started < cycles and time.perf_counter() < deadline:
                started += 1
                call = stream(request, timeout=CALL_TIMEOUT)
                try:
                    await call.read()
                except grpc.aio.AioRpcError as exc:
                    failures.append(f"{exc.code().name}: {exc.details()}")
                    if len(failures) >= MAX_ERRORS:
                        return
                finally:
                    call.cancel()

        await asyncio.gather(*(worker() for _ in range(concurrency)))
        if failures and failures[0].startswith("UNIMPLEMENTED"):
            return {"unavailable": failures[0]}
        return {
            "cycles": started - len(failures),
            "failures": len(failures),
            "elapsed": time.perf_counter() - start,
        }


def loop_name() -> str:
    """The running loop's kind: "uvloop" or "asyncio"."""
    return (
        "uvloop" if type(asyncio.get_running_loop()).__module__.startswith("uvloop") else "asyncio"
    )


def main() -> int:
    # The load generator runs on the loop a default install gives the server (uvloop
    # where it is installed): it is the client of both sides, and the cheaper its own
    # per-call work, the more of the two shared cores the servers get.
    eventloop.run(serve_commands(Load()), "auto")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
