"""Client side of runcontrol: generated v1 stubs, typed errors and a testing helper.

* `runcontrol.v1` — generated protobuf messages and gRPC stubs (`run_control_pb2`, ...).
* `runcontrol.errors` — `RunControlError` and `from_grpc_error` (ErrorInfo decoding).
* `runcontrol.testing` — `serve_in_process()`, a real in-process server for tests.
"""

__all__: list[str] = []
