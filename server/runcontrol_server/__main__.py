"""Entry point of `runcontrol-server` and `python -m runcontrol_server`."""

from __future__ import annotations

import gc
import logging
import sys

from .dependencies import ServerExtraMissing, server_extra_required

log = logging.getLogger("runcontrol_server")

# Allocations (net) between young-generation collections; CPython's default is 700.
GC_YOUNG_THRESHOLD = 10_000


def tune_gc() -> None:
    """Collect less often: the server allocates a few dozen containers per call and
    keeps its runs for long, so the default thresholds spend a tenth of CreateRun's
    time in the collector (measured in-process, see BENCHMARKS.md). Everything built
    at start-up (modules, descriptors) is frozen out of every later collection.
    """
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, older, oldest)


def main(argv: list[str] | None = None) -> int:
    """Parse settings (exit 2 on bad ones), serve until SIGTERM/SIGINT, return 0.

    Exit 2, with the command to run, when the server's own dependencies are missing
    (`pip install runcontrol` is the client alone: the server is the `server` extra).
    """
    try:
        with server_extra_required("runcontrol-server"):
            from . import eventloop
            from .config import parse_settings

            settings = parse_settings(argv)
            # Imported only now so `--help` and usage errors stay fast.
            from .app import ConfigurationError, ListenError, configure_logging, serve
            from .domain.errors import StoreIncompatible, StoreUnavailable
    except ServerExtraMissing as missing:
        print(f"runcontrol-server: {missing}", file=sys.stderr)
        return 2

    configure_logging(settings)
    tune_gc()
    try:
        eventloop.run(serve(settings), settings.loop)
    except (ListenError, ConfigurationError, StoreUnavailable, StoreIncompatible) as exc:
        # The address is taken, the store is out of reach or too new, a driver is
        # missing: the message says what to fix; a traceback adds nothing.
        log.error("%s", exc)
        return 1
    except KeyboardInterrupt:
        # A second Ctrl-C during the grace period: stop at once, as shells expect.
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
