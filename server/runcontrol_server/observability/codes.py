"""The status code a server call ended with, as seen from around its handler.

grpc.aio tells an interceptor only part of it: `context.code()` is set by
`abort`/`abort_with_status`/`set_code` and is None for a plain return. The rest is
what grpc answers for the way the handler ended: an unexpected exception is UNKNOWN,
and a cancelled handler was cut off by the client (CANCELLED) or by its deadline
(DEADLINE_EXCEEDED).
"""

from __future__ import annotations

import asyncio
from typing import Any

import grpc

_Context = grpc.aio.ServicerContext[Any, Any]


def returned_code(context: _Context) -> grpc.StatusCode:
    """The code of a handler that returned normally (OK unless it called `set_code`)."""
    code = context.code()
    return grpc.StatusCode.OK if code is None else code


def raised_code(context: _Context, error: BaseException) -> grpc.StatusCode:
    """The code of a handler that raised `error` (an abort sets the code first)."""
    code = context.code()
    if code is not None:
        return code
    if isinstance(error, asyncio.CancelledError):
        remaining = context.time_remaining()
        if remaining is not None and remaining <= 0:
            return grpc.StatusCode.DEADLINE_EXCEEDED
        return grpc.StatusCode.CANCELLED
    return grpc.StatusCode.UNKNOWN
