"""How many runs a PostgreSQL store holds, for `max_stored_runs`, without counting them
on every create.

Why not `SELECT count(*)` per create: it reads every run (milliseconds at a hundred
thousand), on the hot path of every replica. Why not a counter row: every write's tail
is one statement under the revision row lock (docs/postgres-revisions.md), and a
second hot row updated by creates, deletes and the janitor is more to get wrong than
the check is worth.

Instead bounds: a create uses exactly one revision and adds exactly one run, a delete
(DeleteRun or retention) uses one and removes one, and no other change adds or removes
any, so the runs stored at revision H are within |H - R| of the runs counted at
revision R (the count and its revision read in one snapshot). A create reads the head
(cheap, in its first round trip) and counts (one more round trip, the count becoming
the new base) only when the bounds prove neither room nor a full store. Far from the
limit that is one count per `max_stored_runs - stored` revisions; at the limit at most
one per revision, however many creates are refused.

Not a lock: creates committing at the same moment on other connections each see room
for one, so the store can pass the limit by at most the creates in flight at once
(with one replica, at most its `pool_size`).
"""

from __future__ import annotations


class StoredRunsBound:
    """Bounds on the stored runs: the last count, give or take the revisions since."""

    __slots__ = ("_at_revision", "_counted")

    def __init__(self) -> None:
        self._counted: int | None = None  # None: never counted
        self._at_revision = 0

    def proves_room(self, head: int, limit: int) -> bool:
        """Whether the runs stored at revision `head` are surely fewer than `limit`."""
        if self._counted is None:
            return False
        return self._counted + abs(head - self._at_revision) < limit

    def proves_full(self, head: int, limit: int) -> int | None:
        """The runs surely stored at revision `head` when they are `limit` or more, else
        None."""
        if self._counted is None:
            return None
        at_least = self._counted - abs(head - self._at_revision)
        return at_least if at_least >= limit else None

    def counted(self, runs: int, revision: int) -> None:
        """`runs` counted in the snapshot of `revision`."""
        self._counted = runs
        self._at_revision = revision
