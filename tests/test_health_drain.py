"""Health.Watch streams report NOT_SERVING and end when the server drains."""

from __future__ import annotations

import asyncio

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from runcontrol.testing import serve_in_process
from runcontrol_server.config import Settings

# An hour: a stop that waited for it could not end within the bounded waits below.
GRACE = 3600.0
BOUND = 10.0  # a guard against hangs, never a measurement
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


async def test_health_watch_ends_after_not_serving_and_does_not_hold_the_grace() -> None:
    async with (
        serve_in_process(settings=Settings(grace_period=GRACE)) as server,
        grpc.aio.insecure_channel(server.address) as channel,
    ):
        health = health_pb2_grpc.HealthStub(channel)
        stream = health.Watch(health_pb2.HealthCheckRequest(service=""))
        statuses = [(await stream.read()).status]
        assert statuses == [SERVING]
        stopping = asyncio.ensure_future(server.server.stop(grace=GRACE))
        async with asyncio.timeout(BOUND):
            while (message := await stream.read()) is not grpc.aio.EOF:
                statuses.append(message.status)
        assert statuses == [SERVING, NOT_SERVING]
        assert await stream.code() is grpc.StatusCode.OK
        # Nothing else was open, so the stop does not wait for the grace period.
        async with asyncio.timeout(BOUND):
            await stopping
