"""Run ids: random (version 4) UUIDs in their canonical text form.

`str(uuid.uuid4())` costs a `getrandom` system call and a `UUID` object per id, a
visible share of CreateRun. Here the random bytes are read in blocks (still from
`os.urandom`, the same source) and the text is formatted directly.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

_IDS_PER_BLOCK = 256
# Version 4 in bits 76-79, the RFC 4122 variant (0b10) in bits 62-63.
_CLEAR = ~((0xF000 << 64) | (0xC000 << 48))
_SET = (0x4000 << 64) | (0x8000 << 48)


def _uuid4_texts() -> Iterator[str]:
    while True:
        block = os.urandom(16 * _IDS_PER_BLOCK)
        for offset in range(0, len(block), 16):
            value = int.from_bytes(block[offset : offset + 16], "big") & _CLEAR | _SET
            text = f"{value:032x}"
            yield f"{text[:8]}-{text[8:12]}-{text[12:16]}-{text[16:20]}-{text[20:]}"


_ids = _uuid4_texts()


def new_run_id() -> str:
    """A new random UUID (version 4), e.g. '1b4e28ba-2fa1-41d2-883f-0016d3cca427'."""
    return next(_ids)


def _after_fork_in_child() -> None:
    # A forked child must not hand out the ids left in its parent's block.
    global _ids
    _ids = _uuid4_texts()


os.register_at_fork(after_in_child=_after_fork_in_child)
