"""The gRPC servicer: request validation, conversion and the error table."""

from .drain import DrainGate
from .limits import Limits
from .service import RunControlServicer
from .wire import add_to_server

__all__ = ["DrainGate", "Limits", "RunControlServicer", "add_to_server"]
