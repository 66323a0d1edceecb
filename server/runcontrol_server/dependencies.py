"""The server's own dependencies: the `server` extra, and the message when it is missing.

`pip install runcontrol` installs the client alone (grpcio, protobuf,
googleapis-common-protos, grpcio-health-checking). This package ships in the same
distribution but needs more; `pip install 'runcontrol[server]'` brings it. The entry
point (`runcontrol-server`), `runcontrol.testing` and the pytest fixture turn the
absence of one into `ServerExtraMissing`, which names the command: the server refuses to
start on a partial install rather than fail later when a flag needs a missing part.

Stdlib only: importing this module must work on a client-only install.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from contextlib import contextmanager

SERVER_EXTRA_HINT = "pip install 'runcontrol[server]'"

# Module -> distribution for what the server imports beyond the client: the `server`
# extra of pyproject.toml (tests/test_packaging.py keeps them equal). uvloop is in the
# extra too but optional here: `--loop auto` falls back to asyncio's loop without it.
SERVER_ONLY: dict[str, str] = {
    "grpc_status": "grpcio-status",
    "grpc_reflection": "grpcio-reflection",
    "prometheus_client": "prometheus-client",
}


class ServerExtraMissing(ImportError):
    """The server's own dependencies (the `server` extra) are not installed."""


def missing_server_modules() -> list[str]:
    """The modules of `SERVER_ONLY` that are not installed, in order.

    Looked up, not imported: prometheus_client, for one, is imported only when
    `--metrics-listen` asks for it.
    """
    missing = []
    for module in SERVER_ONLY:
        try:
            found = importlib.util.find_spec(module) is not None
        except (ImportError, ValueError):  # refused by an import hook; a broken entry
            found = False
        if not found:
            missing.append(module)
    return missing


def _missing(what: str, modules: list[str]) -> ServerExtraMissing:
    distributions = ", ".join(SERVER_ONLY[module] for module in modules)
    return ServerExtraMissing(
        f"{what} needs the server's dependencies, which are not installed "
        f"(missing: {distributions}): {SERVER_EXTRA_HINT}",
        name=modules[0],
    )


@contextmanager
def server_extra_required(what: str) -> Iterator[None]:
    """Raise `ServerExtraMissing` ("`what` needs the server's dependencies, which are
    not installed (missing: ...): pip install 'runcontrol[server]'") before the block
    when any of `SERVER_ONLY` is not installed, and for the ModuleNotFoundError of one
    inside it. Any other ImportError (a bug, a client dependency missing) propagates
    unchanged.
    """
    missing = missing_server_modules()
    if missing:
        raise _missing(what, missing)
    try:
        yield
    except ModuleNotFoundError as error:
        root = (error.name or "").partition(".")[0]
        if root not in SERVER_ONLY:
            raise
        raise _missing(what, [root]) from error
