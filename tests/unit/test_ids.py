"""Run ids are canonical random UUIDs, unique, and never shared with a forked child."""

from __future__ import annotations

import os
import uuid

import pytest

from runcontrol_server.domain.ids import new_run_id


def test_ids_are_canonical_version_4_uuids() -> None:
    for _ in range(1_000):  # several blocks of random bytes
        text = new_run_id()
        parsed = uuid.UUID(text)
        assert str(parsed) == text
        assert parsed.version == 4
        assert parsed.variant == uuid.RFC_4122


def test_ids_are_unique() -> None:
    ids = [new_run_id() for _ in range(20_000)]
    assert len(set(ids)) == len(ids)


@pytest.mark.filterwarnings("ignore:.*fork:DeprecationWarning")
def test_forked_child_does_not_repeat_the_parents_ids() -> None:
    new_run_id()  # the parent has a block in use
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: send the ids it would hand out next
        os.close(read)
        os.write(write, "\n".join(new_run_id() for _ in range(10)).encode())
        os._exit(0)
    os.close(write)
    with os.fdopen(read) as pipe:
        child_ids = set(pipe.read().split())
    os.waitpid(pid, 0)
    parent_ids = {new_run_id() for _ in range(10)}
    assert len(child_ids) == 10
    assert not child_ids & parent_ids
