"""runcontrol server: the `runcontrol.v1.RunControl` gRPC service and its run registry."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("runcontrol")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"

__all__ = ["__version__"]
