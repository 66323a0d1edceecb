"""The gRPC servicer: request validation, conversion and the error table."""

from .limits import Limits
from .service import RunControlServicer

__all__ = ["Limits", "RunControlServicer"]
