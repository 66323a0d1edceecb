"""Drop-in replacements for in-process run registries, backed by runcontrol.

* `runcontrol.compat.deerflow` — deer-flow's `RunManager` (names, signatures, return
  conventions), embedded (in-process domain manager) or against a running service.
"""
