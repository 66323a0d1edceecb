"""The payload format a call asked for: Structs (the default) or JSON text.

A client that sends the request header `runcontrol-payload-format: json` gets every
RunRecord with `metadata_json` / `kwargs_json` instead of the Structs (exact
integers); without it, answers are exactly as before the header existed.
"""

from __future__ import annotations

from typing import Any

import grpc

PAYLOAD_FORMAT_HEADER = "runcontrol-payload-format"
PAYLOAD_FORMAT_JSON = "json"


def wants_json(context: grpc.aio.ServicerContext[Any, Any]) -> bool:
    """Whether the call carries `runcontrol-payload-format: json`.

    Read once per call: a scan of the few request headers, no allocation beyond the
    tuple grpc builds. Any other value (or none) means Structs.
    """
    for key, value in context.invocation_metadata() or ():
        if key == PAYLOAD_FORMAT_HEADER:
            return bool(value == PAYLOAD_FORMAT_JSON)
    return False
