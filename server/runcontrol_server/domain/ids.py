"""Run ids: random (version 4) UUIDs in their canonical text form.

`str(uuid.uuid4())` costs a `getrandom` system call and a `UUID` object per id, a
visible share of CreateRun. Here the random bytes are read in blocks (still from
`os.urandom`, the same source) and the text is formatted directly.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

_IDS_PER_BLOCK = 256
# The RFC 4122 variant (0b10) in the top bits of the clock-seq nibble: its hex digit.
_VARIANT = "89ab89ab89ab89ab"


def _uuid4_block() -> Iterator[str]:
    """Ids for one block of random bytes, formatted in one pass and handed out by a
    list iterator (C `next`, no generator frame to resume per id)."""
    block = os.urandom(16 * _IDS_PER_BLOCK).hex()
    return iter(
        [
            # The version digit forced to 4, the variant digit to 8-b: 122 random bits.
            f"{h[:8]}-{h[8:12]}-4{h[13:16]}-{_VARIANT[int(h[16], 16)]}{h[17:20]}-{h[20:32]}"
            for h in (block[i : i + 32] for i in range(0, len(block), 32))
        ]
    )


_ids = _uuid4_block()


def new_run_id() -> str:
    """A new random UUID (version 4), e.g. '1b4e28ba-2fa1-41d2-883f-0016d3cca427'."""
    global _ids
    try:
        return next(_ids)
    except StopIteration:
        _ids = _uuid4_block()
        return next(_ids)


def _after_fork_in_child() -> None:
    # A forked child must not hand out the ids left in its parent's block.
    global _ids
    _ids = _uuid4_block()


os.register_at_fork(after_in_child=_after_fork_in_child)
