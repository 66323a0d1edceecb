"""Entry point of `runcontrol-server` and `python -m runcontrol_server`."""

from __future__ import annotations

import gc
import logging
import sys

from . import eventloop
from .config import parse_settings

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
    """Parse settings (exit 2 on bad ones), serve until SIGTERM/SIGINT, return 0."""
    settings = parse_settings(argv)
    # Imported only now so `--help` and usage errors stay fast and need no grpc.
    from .app import ConfigurationError, ListenError, configure_logging, serve
    from .domain.errors import StoreIncompatible, StoreUnavailable

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
