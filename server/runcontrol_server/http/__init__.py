"""RunControl over HTTP: the Connect protocol (JSON and binary) and gRPC-Web.

One service, three protocols: `--http-listen HOST:PORT` serves the same RunControl
methods as the gRPC port, from the same process, manager and servicer, through the
`connectrpc` package's ASGI application under uvicorn. Nothing here defines an API:
the endpoints are read from the service's descriptor, so the proto stays the only
definition, and every call runs the very handler the gRPC server runs for it, built
by the very interceptors (observability, authentication, drain), so validation, the
error table, roles, limits, metrics and the access log cannot differ between the two.

* `handlers` — the gRPC method handlers as registered, and the interceptor chain
  that grpc.aio runs before each call, run here for an HTTP call;
* `context` — what those handlers use of a grpc.aio servicer context, over an HTTP call;
* `status` — a gRPC status (code, message, ErrorInfo) as a Connect error;
* `codecs` — request and response bytes in binary or JSON, pre-encoded answers passed through;
* `endpoints` — the connectrpc endpoints, one per method of the service descriptor;
* `web` — the live web view's files at "/" (built from client/web, shipped in
  `web_assets/`) in front of the application, and CORS for `--http-cors-origin`;
* `listener` — the ASGI application under uvicorn, in the server's event loop.

Only `handlers` is imported when HTTP is off (it needs grpc alone); the rest needs the
`http` extra (connectrpc, uvicorn).
"""
