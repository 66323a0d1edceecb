"""Hypothesis profiles for the model-based test.

`make test` runs the short profile (a few dozen programs per store); `make thorough`
passes `--hypothesis-profile thorough` (registered here, so the option finds it when
pytest is pointed at `tests/model`): at least 1,000 programs of up to 50 steps per
store, no deadline. `RUNCONTROL_MODEL_PROFILE=thorough` selects it too.
"""

from __future__ import annotations

from hypothesis import HealthCheck, settings

_COMMON = {
    "deadline": None,
    "suppress_health_check": [HealthCheck.too_slow, HealthCheck.filter_too_much],
    "print_blob": True,
}
SHORT = settings(max_examples=50, stateful_step_count=50, **_COMMON)  # type: ignore[arg-type]
THOROUGH = settings(max_examples=1000, stateful_step_count=50, **_COMMON)  # type: ignore[arg-type]

settings.register_profile("thorough", THOROUGH)
