"""`canonical_json` keeps one C encoder for every call: a failed call must leave
nothing behind that a later call could trip over."""

from __future__ import annotations

import json

import pytest

from runcontrol_server.domain.model import canonical_json


def test_the_text_is_json_dumps_with_the_canonical_options() -> None:
    value = {"b": [1, 2.5, None, True], "a": {"é": "x\n", "\ud800": -0.0}, "n": 2**70}
    expected = json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    )
    assert canonical_json(value) == expected
    assert canonical_json({}) == canonical_json(None) == "{}"


def test_a_failed_call_leaves_no_marker_behind() -> None:
    shared = {"inner": [1, 2]}
    with pytest.raises(ValueError, match="not JSON compliant"):
        canonical_json({"a": shared, "b": float("nan")})
    with pytest.raises(TypeError):
        canonical_json({"a": shared, "b": object()})
    # The same containers again: not taken for a circular reference.
    assert canonical_json({"a": shared}) == '{"a":{"inner":[1,2]}}'
    circular: dict[str, object] = {}
    circular["self"] = circular
    with pytest.raises(ValueError, match="Circular reference"):
        canonical_json(circular)
    assert canonical_json({"again": shared}) == '{"again":{"inner":[1,2]}}'
