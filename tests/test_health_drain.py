"""Health.Watch streams report NOT_SERVING and end when the server drains."""

from __future__ import annotations

import asyncio
import time

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from runcontrol.testing import serve_in_process
from runcontrol_server.config import Settings

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


async def test_health_watch_ends_after_not_serving_and_does_not_hold_the_grace() -> None:
    async with (
        serve_in_process(settings=Settings(grace_period=5.0)) as server,
        grpc.aio.insecure_channel(server.address) as channel,
    ):
        health = health_pb2_grpc.HealthStub(channel)
        stream = health.Watch(health_pb2.HealthCheckRequest(service=""))
        statuses = [(await stream.read()).status]
        assert statuses == [SERVING]
        started = time.monotonic()
        stopping = asyncio.ensure_future(server.server.stop(grace=5.0))
        async with asyncio.timeout(4):
            while (message := await stream.read()) is not grpc.aio.EOF:
                statuses.append(message.status)
        assert statuses == [SERVING, NOT_SERVING]
        assert await stream.code() is grpc.StatusCode.OK
        async with asyncio.timeout(4):
            await stopping
        # Nothing else was open, so the stop did not wait for the grace period.
        assert time.monotonic() - started < 4.0
