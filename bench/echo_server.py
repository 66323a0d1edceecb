"""The wire baseline: a bare grpc.aio server of the same process model as runcontrol.

`python -m bench.echo_server --listen 127.0.0.1:0 --sizes '{"CreateRun": 420, ...}'`
prints `listening on HOST:PORT`, then serves `/bench.Echo/<Method>`:

- every unary method answers a pre-built payload of the size given for it in
  `--sizes` (the size of runcontrol's real answer, measured by the driver), whatever
  the request; no protobuf work at all (identity serializers);
- `WatchRuns` (server streaming) registers an `asyncio.Queue` under its request's
  thread (the leading `thread_id = 1` field, which WatchRunsRequest and CreateRunRequest
  share; no parsing), sends a small "ready" message, then streams whatever is
  published; `Publish` (unary) puts one payload of size `sizes["WatchEvent"]` into
  every queue registered under its own request's thread: a bare asyncio fan-out with
  a perfect index (streams of other threads cost a publish nothing).

With `--parse`, every unary method first parses its request as runcontrol's request
message of that name (`CreateRunRequest`, ...), as any server of the contract must,
and answers the same bytes: the floor of a Python server of this contract, measured
beside the plain echo.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
from typing import Any

import grpc

from runcontrol_server import eventloop

SERVICE = "bench.Echo"
# What a real WatchRuns stream sends first here (end_of_initial_set at revision 1).
READY = b"\x08\x01\x18\x01"
_QUEUE_LIMIT = 100_000  # per stream; a bench never publishes more


def _payload(size: int) -> bytes:
    return b"x" * size


def thread_key(request: bytes) -> bytes:
    """The leading `thread_id` field (tag, one-byte length, text) of a request: the
    fan-out key; b"" when the request does not start with one."""
    if len(request) >= 2 and request[0] == 0x0A and request[1] < 0x80:
        return request[: 2 + request[1]]
    return b""


def request_parser(name: str) -> Any:
    """`FromString` of runcontrol's request message for method `name`."""
    from runcontrol.v1 import run_control_pb2

    return getattr(run_control_pb2, f"{name}Request").FromString


class EchoService:
    def __init__(self, sizes: dict[str, int], *, parse: bool = False) -> None:
        self._parse = parse
        self._payloads = {name: _payload(size) for name, size in sizes.items()}
        self._event = self._payloads.get("WatchEvent", _payload(1))
        self._publish_answer = self._payloads.get("Publish", b"")
        self._queues: dict[bytes, set[asyncio.Queue[bytes]]] = {}

    def unary(self, name: str) -> Any:
        answer = self._payloads.get(name, b"")

        async def handler(request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
            return answer

        return handler

    async def publish(self, request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
        event = self._event
        for queue in self._queues.get(thread_key(request), ()):
            queue.put_nowait(event)
        return self._publish_answer

    async def watch(self, request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        # The writer API (a coroutine handler writing with context.write), as runcontrol's
        # WatchRuns does: the cheaper of grpc.aio's two ways to serve a stream.
        queue: asyncio.Queue[bytes] = asyncio.Queue(_QUEUE_LIMIT)
        key = thread_key(request)
        queues = self._queues.setdefault(key, set())
        queues.add(queue)
        try:
            await context.write(READY)
            while True:
                await context.write(await queue.get())
        finally:
            queues.discard(queue)
            if not queues and self._queues.get(key) is queues:
                del self._queues[key]

    def handler(self) -> grpc.GenericRpcHandler:
        methods: dict[str, grpc.RpcMethodHandler[Any, Any]] = {
            name: grpc.unary_unary_rpc_method_handler(
                self.unary(name),
                request_deserializer=request_parser(name) if self._parse else None,
            )
            for name in self._payloads
            if name not in ("WatchEvent", "Publish")
        }
        methods["Publish"] = grpc.unary_unary_rpc_method_handler(self.publish)
        methods["WatchRuns"] = grpc.unary_stream_rpc_method_handler(self.watch)
        return grpc.method_handlers_generic_handler(SERVICE, methods)


async def serve(listen: str, sizes: dict[str, int], parse: bool = False) -> None:
    if not listen.startswith("127.0.0.1:"):
        raise SystemExit("the echo server only binds 127.0.0.1")
    # The same options as runcontrol's server, so only the work differs.
    server = grpc.aio.server(
        options=[("grpc.so_reuseport", 0), ("grpc.max_receive_message_length", 4 << 20)]
    )
    server.add_generic_rpc_handlers((EchoService(sizes, parse=parse).handler(),))
    port = server.add_insecure_port(listen)
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    print(f"listening on 127.0.0.1:{port}", flush=True)
    await stop.wait()
    await server.stop(0.5)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.echo_server")
    parser.add_argument("--listen", default="127.0.0.1:0")
    parser.add_argument("--sizes", default="{}", help="JSON: method name -> answer bytes")
    parser.add_argument(
        "--parse", action="store_true", help="parse each unary request as runcontrol's"
    )
    args = parser.parse_args(argv)
    sizes = {str(k): int(v) for k, v in json.loads(args.sizes).items()}
    # The same loop choice as runcontrol-server's default (`--loop auto`), so the
    # baseline and the subject differ only in what the service does.
    eventloop.run(serve(args.listen, sizes, args.parse), "auto")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
