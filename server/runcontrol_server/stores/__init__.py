"""Implementations of `runcontrol_server.domain.store.RunStore`."""

from .memory import InMemoryRunStore

__all__ = ["InMemoryRunStore"]
