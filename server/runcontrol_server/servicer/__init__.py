"""The gRPC servicer: request validation, conversion and the error table."""

from .limits import Limits
from .service import RunControlServicer
from .wire import add_to_server

__all__ = ["Limits", "RunControlServicer", "add_to_server"]
