"""The PostgreSQL store's bounds on its stored runs (`stores.postgres.stored_runs`):
never claim room or a full store that the revisions since the last count could undo."""

from __future__ import annotations

from runcontrol_server.stores.postgres.stored_runs import StoredRunsBound


def test_nothing_is_proven_before_a_count() -> None:
    bound = StoredRunsBound()
    assert not bound.proves_room(0, 10)
    assert bound.proves_full(0, 10) is None


def test_room_lasts_while_the_revisions_since_cannot_fill_it() -> None:
    bound = StoredRunsBound()
    bound.counted(7, revision=100)
    assert bound.proves_room(102, 10)  # at most 9 stored
    assert not bound.proves_room(103, 10)  # maybe 10: count again
    # A head older than the count (a create that read it before) is as far from it.
    assert not bound.proves_room(97, 10)


def test_a_full_store_stays_proven_until_deletes_could_have_made_room() -> None:
    bound = StoredRunsBound()
    bound.counted(12, revision=50)
    assert bound.proves_full(50, 10) == 12
    assert bound.proves_full(52, 10) == 10  # two deletes since, at most
    assert bound.proves_full(53, 10) is None  # maybe 9: count again
    assert not bound.proves_room(50, 10)
