"""The PostgreSQL store: every invariant held by the database, shared by every replica.

Each operation is one transaction of at most two round trips (psycopg pipeline mode;
a create near `max_stored_runs` takes a third, to count the runs: `stored_runs`):

1. lock what the operation decides on and read it: the thread row (`rc_threads`, which
   serialises every strategy on one thread, ENQUEUE's several active runs included),
   then the runs it will change (`FOR UPDATE`);
2. the domain's rules decide in Python (`rules`, the same code as the in-memory store),
   then the writes go out as ONE statement (data-modifying CTEs) that takes the ONE
   revision row first (`UPDATE rc_revision ... RETURNING head`), writes the runs and
   their change rows and NOTIFYs, sent with the COMMIT in one round trip. The revision
   row lock is held only while the database executes that statement and commits, never
   across a round trip to this process, so revisions are gapless and committed in
   revision order (a reader never sees N+1 before N) at little cost.

Locks are always taken in the order thread -> runs -> revision; the janitor's
statements skip locked runs (`SKIP LOCKED`) and never take a thread lock, so no two
transactions can wait on each other in a cycle. Timestamps are the database's clock
(`rc_revision.stamped_at`, never going backwards), so replicas never compare clocks.

Replicas learn of each other's commits through LISTEN/NOTIFY carrying the revision
(`wait_for_changes`), with a poll as the safety net, and read `rc_changes`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from datetime import datetime, timedelta
from typing import Any, TypeVar

import psycopg
from psycopg import sql
from psycopg.errors import (
    DeadlockDetected,
    ForeignKeyViolation,
    SerializationFailure,
    UniqueViolation,
)
from psycopg.pq import TransactionStatus
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from ...domain.errors import (
    LeaseNotHeld,
    RequestIdReused,
    RevisionCompacted,
    RevisionMismatch,
    RunActive,
    RunNotFound,
    StoreUnavailable,
)
from ...domain.history import DEFAULT_MAX_AGE, DEFAULT_MAX_CHANGES
from ...domain.limits import DEFAULT_STORE_LIMITS, StoreLimits
from ...domain.model import (
    CancelAction,
    CancelOutcome,
    ChangeSet,
    CreateOutcome,
    DeleteOutcome,
    FeedBounds,
    Inflight,
    ListQuery,
    Run,
    RunDraft,
    RunPage,
    RunStatus,
    StatusChange,
    TransitionOutcome,
    cursor_of,
)
from ...domain.rules import (
    apply_lease_lapse,
    apply_transition,
    check_renewal,
    check_stored_runs,
    check_transition,
    interrupt_reason,
    plan_create,
)
from ...domain.tasks import stop_task
from .records import (
    ACTIVE_SQL,
    RUN_COLUMNS,
    change_from_row,
    lease_ttl_micros,
    outcome_from_json,
    run_from_row,
    utc,
)
from .schema import migrate
from .stored_runs import StoredRunsBound

log = logging.getLogger(__name__)

DEFAULT_POOL_SIZE = 10
CHANNEL = "runcontrol_feed"
# How long a call waits for a pooled connection before answering UNAVAILABLE.
DEFAULT_CONNECT_TIMEOUT = 5.0
# Every session: UTC timestamps; and generic plans for prepared statements (psycopg
# prepares a statement on its fifth use): every statement here is the same shape each
# time, and the write tail would otherwise be planned anew on every call (~0.3 ms).
_SESSION_OPTIONS = "-c TimeZone=UTC -c plan_cache_mode=force_generic_plan"
# A pooled connection idle longer than this is checked (one round trip) before use.
IDLE_CHECK_AFTER = 1.0
# Attempts of one operation that lost a race (deadlock victim, request_id raced).
_ATTEMPTS = 3
_LISTEN_RETRY_MAX = 2.0

_Conn = psycopg.AsyncConnection[Any]
_T = TypeVar("_T")
# Aborts the database uses to resolve a race; the operation is simply run again.
_LOST_RACE = (DeadlockDetected, SerializationFailure)

# Allocates the next revision and the database time of it: the first CTE of every
# write's tail, which is one statement sent with the COMMIT (see the module docstring).
_NEXT_REVISION = """
    UPDATE rc_revision SET head = head + 1,
        stamped_at = greatest(stamped_at, clock_timestamp())
    RETURNING head, stamped_at"""
_NOTIFY = "LATERAL (SELECT pg_notify(%(channel)s, 'h' || v.head)) AS notified"


def _update_tail(assignments: str) -> bytes:
    """One run's change as one statement: the revision, the update (`assignments`,
    the run aliased `r`), its change row and the NOTIFY; answers the updated run."""
    return f"""
WITH v AS ({_NEXT_REVISION}
), u AS (
    UPDATE rc_runs r SET {assignments}, updated_at = v.stamped_at, mod_revision = v.head
    FROM v WHERE r.run_id = %(run_id)s
    RETURNING r.*
), c AS (
    INSERT INTO rc_changes (revision, idx, kind, prev_status, record, committed_at)
    SELECT v.head, 1, 'updated', %(prev_status)s, to_jsonb(u), v.stamped_at FROM v, u
)
SELECT {", ".join("u." + c for c in Run._fields)} FROM u, v, {_NOTIFY}
""".encode()


# Every move out of RUNNING ends the claim's lease (`rules` clears lease_ttl too).
_NO_LEASE = "lease_ttl = NULL, lease_expires_at = NULL"
# A status move; a claim with a lease starts it at the revision's time.
_SET_STATUS_TAIL = _update_tail(
    "status = %(status)s, error = %(error)s, worker_id = %(worker_id)s,"
    " attempt = %(attempt)s, lease_ttl = %(lease_ttl)s::bigint,"
    " lease_expires_at = v.stamped_at + %(lease_ttl)s::bigint * interval '1 microsecond'"
)
_CANCEL_TAIL = _update_tail(
    f"status = 'interrupted', cancel_action = %(action)s, cancel_reason = %(reason)s, {_NO_LEASE}"
)
_EXPIRE_TAIL = _update_tail(
    f"status = 'timeout', error = coalesce(r.error, 'deadline exceeded'), {_NO_LEASE}"
)
_LAPSE_TAIL = _update_tail(
    f"status = %(status)s, error = %(error)s, worker_id = %(worker_id)s, {_NO_LEASE}"
)
# A renewal: the lapse moves to the store's now + TTL; no revision, no change row.
_RENEW = f"""
UPDATE rc_runs SET lease_expires_at = (
    SELECT greatest(stamped_at, clock_timestamp()) FROM rc_revision
) + lease_ttl * interval '1 microsecond'
WHERE run_id = %s AND status = 'running' AND worker_id = %s AND lease_ttl IS NOT NULL
RETURNING {RUN_COLUMNS}, lease_expires_at"""
# A deletion: the DELETED change carries the run's last record (read in the same
# snapshot as the DELETE); answers the revision.
_DELETE_TAIL = f"""
WITH v AS ({_NEXT_REVISION}
), c AS (
    INSERT INTO rc_changes (revision, idx, kind, prev_status, record, committed_at)
    SELECT v.head, 1, 'deleted', r.status, to_jsonb(r), v.stamped_at
    FROM v, rc_runs r WHERE r.run_id = %(run_id)s
), d AS (
    DELETE FROM rc_runs WHERE run_id = %(run_id)s
)
SELECT v.head FROM v, {_NOTIFY}
""".encode()
# Lock the thread row, creating it if needed (one statement, atomic either way).
_LOCK_THREAD = (
    b"INSERT INTO rc_threads (thread_id) VALUES (%s)"
    b" ON CONFLICT (thread_id) DO UPDATE SET thread_id = EXCLUDED.thread_id"
)

# CreateRun's writes as one statement: the revision (taken last: see the module
# docstring), the interrupted runs, the new run, their change rows, the request_id's
# first answer and the NOTIFY. Data-modifying CTEs all run, in one snapshot; the change
# rows are built from what the writes RETURN. Answers the new run (k = 0), then the
# interrupted ones (k = 1).
_CREATE_TAIL = f"""
WITH v AS ({_NEXT_REVISION}
), i AS (
    UPDATE rc_runs r SET status = 'interrupted', cancel_action = %(action)s,
        cancel_reason = %(reason)s, updated_at = v.stamped_at, mod_revision = v.head,
        {_NO_LEASE}
    FROM v WHERE r.run_id = ANY(%(ids)s::text[])
    RETURNING r.*
), n AS (
    INSERT INTO rc_runs ({RUN_COLUMNS})
    SELECT %(run_id)s, %(thread_id)s, %(assistant_id)s, 'pending', %(on_disconnect)s,
        %(strategy)s, %(metadata)s, %(kwargs)s, v.stamped_at, v.stamped_at, v.head, v.head,
        NULL, 'interrupt', NULL, NULL, v.stamped_at + %(timeout)s::interval, %(request_id)s,
        0, %(max_attempts)s::integer, NULL
    FROM v
    RETURNING *
), c AS (
    INSERT INTO rc_changes (revision, idx, kind, prev_status, record, committed_at)
    SELECT v.head, u.idx, 'updated', u.prev_status, to_jsonb(i), v.stamped_at
    FROM v, unnest(%(ids)s::text[], %(prevs)s::text[])
        WITH ORDINALITY AS u(run_id, prev_status, idx)
    JOIN i ON i.run_id = u.run_id
    UNION ALL
    SELECT v.head, cardinality(%(ids)s::text[]) + 1, 'created', NULL, to_jsonb(n),
        v.stamped_at
    FROM v, n
), q AS (
    INSERT INTO rc_requests (request_id, fingerprint, run_id, outcome)
    SELECT %(request_id)s, %(fingerprint)s, n.run_id, jsonb_build_object(
        'run', to_jsonb(n),
        'interrupted', coalesce(
            (SELECT jsonb_agg(to_jsonb(i) ORDER BY i.create_revision) FROM i), '[]'::jsonb),
        'queued_behind', %(queued_behind)s::jsonb)
    FROM n WHERE %(request_id)s::text IS NOT NULL
)
SELECT 0 AS k, {", ".join("n." + c for c in Run._fields)}
FROM n, v, {_NOTIFY}
UNION ALL
SELECT 1 AS k, {", ".join("i." + c for c in Run._fields)} FROM i
ORDER BY k
""".encode()


def _by_creation(run: Run) -> int:
    return run.create_revision


_LOCK_THREAD_OF_RUN = (
    b"SELECT 1 FROM rc_threads WHERE thread_id ="
    b" (SELECT thread_id FROM rc_runs WHERE run_id = %s) FOR UPDATE"
)
_LOCK_RUN = f"SELECT {RUN_COLUMNS} FROM rc_runs WHERE run_id = %s FOR UPDATE".encode()
# The compaction mark on every row, and once alone (change columns NULL) when no change
# is in range; rows in feed order.
_READ_CHANGES = (
    "SELECT k.revision, c.revision, c.kind, c.prev_status, c.record"
    " FROM rc_compaction k LEFT JOIN rc_changes c ON c.revision > %s AND c.revision <= %s"
    " ORDER BY c.revision, c.idx"
)
# The thread's active runs, oldest first, locked (a create decides on them).
_LOCK_ACTIVE = (
    f"SELECT {RUN_COLUMNS} FROM rc_runs WHERE thread_id = %s"
    f" AND status IN {ACTIVE_SQL} ORDER BY create_revision FOR UPDATE"
).encode()
# The active runs of a run's thread created before it (ENQUEUE's FIFO for claims).
_EARLIER_ACTIVE = (
    f"SELECT e.run_id FROM rc_runs e JOIN rc_runs r"
    f" ON r.run_id = %s AND e.thread_id = r.thread_id"
    f" AND e.create_revision < r.create_revision"
    f" WHERE e.status IN {ACTIVE_SQL} ORDER BY e.create_revision"
).encode()


class PostgresRunStore:
    """`RunStore` in a PostgreSQL database, shared by any number of server replicas.

    `limits` bound the runs active per thread (exact: under the thread row lock) and
    the runs stored (see `stored_runs`).
    """

    def __init__(
        self,
        url: str,
        *,
        pool_size: int = DEFAULT_POOL_SIZE,
        history_limit: int = DEFAULT_MAX_CHANGES,
        history_max_age: timedelta | None = DEFAULT_MAX_AGE,
        connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
        limits: StoreLimits = DEFAULT_STORE_LIMITS,
    ) -> None:
        self._url = url
        self._limits = limits
        self._stored_runs = StoredRunsBound()
        self._history_limit = history_limit
        self._history_max_age = history_max_age
        self._pool_size = pool_size
        self._connect_timeout = connect_timeout
        self._pool: AsyncConnectionPool[Any] | None = None
        self._opened = False
        self._closed = False
        self._identity: str | None = None
        # The newest bounds this process knows of (own commits, notifications, polls).
        self._head_seen = 0
        self._compact_seen = 0
        self._waiters: set[asyncio.Future[None]] = set()
        self._listener: asyncio.Task[None] | None = None
        # When each pooled connection was last given back (see `_check_if_idle`).
        self._returned_at: weakref.WeakKeyDictionary[_Conn, float] = weakref.WeakKeyDictionary()

    # -- life cycle --------------------------------------------------------------------

    async def open(self) -> None:
        """Connect, migrate the schema and start listening for other replicas' commits.
        Idempotent. Raises StoreUnavailable when the database cannot be reached."""
        if self._opened:
            return
        if self._pool is None:
            self._pool = AsyncConnectionPool(
                self._url,
                min_size=1,
                max_size=self._pool_size,
                kwargs={"autocommit": True, "options": _SESSION_OPTIONS},
                timeout=self._connect_timeout,
                open=False,
                check=self._check_if_idle,
                reset=self._returned,
                name="runcontrol",
            )
        try:
            await self._pool.open(wait=True, timeout=self._connect_timeout)
        except PoolTimeout as error:
            raise StoreUnavailable(f"cannot connect to the database: {error}") from error
        async with self._connection() as conn:
            await migrate(conn)
            cursor = await conn.execute(b"SELECT store_id FROM rc_identity")
            row = await cursor.fetchone()
            assert row is not None
            self._identity = str(row[0])
        self._opened = True
        bounds = await self.feed_bounds()
        self._note(bounds.compact_revision, bounds.head_revision)
        self._listener = asyncio.get_running_loop().create_task(
            self._listen(), name="runcontrol-pg-listen"
        )

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._listener is not None:
            await stop_task(self._listener)
        self._wake()
        if self._pool is not None:
            await self._pool.close()

    @asynccontextmanager
    async def _connection(self) -> AsyncIterator[_Conn]:
        """A pooled connection; the database being out of reach is StoreUnavailable."""
        if self._pool is None:
            raise RuntimeError("the store is not open (RunManager.start opens it)")
        try:
            async with self._pool.connection() as conn:
                yield conn
        except PoolTimeout as error:
            raise StoreUnavailable("no database connection available") from error
        except psycopg.OperationalError as error:
            if isinstance(error, _LOST_RACE):
                raise
            raise StoreUnavailable(f"database unavailable: {error.sqlstate or error}") from error

    @asynccontextmanager
    async def _transaction(self) -> AsyncIterator[tuple[_Conn, psycopg.AsyncPipeline]]:
        """One transaction in pipeline mode, BEGIN and COMMIT sent as plain statements.

        Nothing is synced but where the caller reads (`pipeline.sync()` or a fetch), so
        the revision row's UPDATE, the writes and the COMMIT travel in one round trip
        (psycopg's `transaction()` would sync after BEGIN and before COMMIT). A failure
        anywhere, including in the COMMIT's round trip, leaves the connection rolled back.
        """
        async with self._connection() as conn:
            try:
                async with conn.pipeline() as pipeline:
                    await conn.execute(b"BEGIN")
                    yield conn, pipeline
                    await conn.execute(b"COMMIT")
            except BaseException:
                if conn.info.transaction_status != TransactionStatus.IDLE and not conn.broken:
                    with contextlib.suppress(psycopg.Error):
                        await conn.execute(b"ROLLBACK")
                raise

    async def _check_if_idle(self, conn: _Conn) -> None:
        """The pool's check before lending a connection: a round trip, but only for a
        connection idle long enough to have been dropped (a database restart, a proxy's
        idle timeout); a busy pool lends without one."""
        returned = self._returned_at.get(conn)
        if returned is None or time.monotonic() - returned > IDLE_CHECK_AFTER:
            await AsyncConnectionPool.check_connection(conn)

    async def _returned(self, conn: _Conn) -> None:
        self._returned_at[conn] = time.monotonic()

    async def _fetch(self, query: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        async with self._connection() as conn:
            cursor = await conn.execute(query.encode(), params)
            return await cursor.fetchall()

    async def identity(self) -> str:
        if self._identity is None:
            raise RuntimeError("the store is not open (RunManager.start opens it)")
        return self._identity

    # -- reads -------------------------------------------------------------------------

    async def get_run(self, run_id: str) -> Run:
        rows = await self._fetch(f"SELECT {RUN_COLUMNS} FROM rc_runs WHERE run_id = %s", (run_id,))
        if not rows:
            raise RunNotFound(run_id)
        return run_from_row(rows[0])

    async def list_runs(self, query: ListQuery) -> RunPage:
        conditions = ["true"]
        params: list[Any] = []
        if query.thread_id is not None:
            conditions.append("thread_id = %s")
            params.append(query.thread_id)
        if query.statuses:
            conditions.append("status = ANY(%s::text[])")
            params.append(sorted(s.value for s in query.statuses))
        if query.after is not None:
            conditions.append("create_revision < %s")
            params.append(query.after.create_revision)
        params.append(query.limit + 1)
        # One statement, one snapshot: the page and the revision agree.
        rows = await self._fetch(
            f"SELECT v.head, r.* FROM rc_revision v LEFT JOIN LATERAL ("
            f" SELECT {RUN_COLUMNS} FROM rc_runs WHERE {' AND '.join(conditions)}"
            f" ORDER BY create_revision DESC LIMIT %s) r ON true",
            params,
        )
        revision = int(rows[0][0])
        runs = tuple(run_from_row(row, 1) for row in rows if row[1] is not None)
        more = len(runs) > query.limit
        runs = runs[: query.limit]
        return RunPage(runs, cursor_of(runs[-1]) if more and runs else None, revision)

    async def inflight(self, thread_id: str) -> Inflight:
        rows = await self._fetch(
            "SELECT head, array(SELECT run_id FROM rc_runs WHERE thread_id = %s"
            f" AND status IN {ACTIVE_SQL} ORDER BY create_revision) FROM rc_revision",
            (thread_id,),
        )
        return Inflight(thread_id, tuple(rows[0][1]), int(rows[0][0]))

    async def revision(self) -> int:
        rows = await self._fetch("SELECT head FROM rc_revision")
        return int(rows[0][0])

    async def now(self) -> datetime:
        rows = await self._fetch("SELECT greatest(stamped_at, clock_timestamp()) FROM rc_revision")
        value: datetime = rows[0][0]
        return utc(value)

    async def snapshot(
        self, thread_id: str | None, run_ids: frozenset[str]
    ) -> tuple[tuple[Run, ...], int]:
        conditions = ["true"]
        params: list[Any] = []
        if thread_id is not None:
            conditions.append("thread_id = %s")
            params.append(thread_id)
        if run_ids:
            conditions.append("run_id = ANY(%s::text[])")
            params.append(sorted(run_ids))
        rows = await self._fetch(
            f"SELECT v.head, r.* FROM rc_revision v LEFT JOIN LATERAL ("
            f" SELECT {RUN_COLUMNS} FROM rc_runs WHERE {' AND '.join(conditions)}"
            f" ORDER BY create_revision) r ON true",
            params,
        )
        runs = tuple(run_from_row(row, 1) for row in rows if row[1] is not None)
        return runs, int(rows[0][0])

    async def next_deadline(self) -> datetime | None:
        rows = await self._fetch(
            f"SELECT min(deadline) FROM rc_runs WHERE status IN {ACTIVE_SQL}"
            " AND deadline IS NOT NULL"
        )
        return None if rows[0][0] is None else utc(rows[0][0])

    async def oldest_finished_at(self) -> datetime | None:
        rows = await self._fetch(
            f"SELECT min(updated_at) FROM rc_runs WHERE status NOT IN {ACTIVE_SQL}"
        )
        return None if rows[0][0] is None else utc(rows[0][0])

    # -- the change feed ---------------------------------------------------------------

    def local_history(self) -> None:
        return None  # shared by replicas: each process follows the feed

    async def read_changes(self, after: int, limit: int) -> Sequence[ChangeSet]:
        # One statement, so the compaction mark and the rows come from one snapshot
        # (compaction moves the mark and deletes in one transaction): if `after` is
        # still kept in it, no row after `after` is missing. No pipeline: a batch can
        # be large, large results are where psycopg's pipeline mode has hung
        # (psycopg#685), and a CI run once stalled 60 s in this read's pipeline exit;
        # a single statement is one round trip anyway.
        rows = await self._fetch(_READ_CHANGES, (after, after + limit))
        compacted = int(rows[0][0])
        if after < compacted:
            raise RevisionCompacted(after + 1, compacted)
        change_sets: list[ChangeSet] = []
        if rows[0][1] is None:  # the compaction row alone: nothing after `after`
            return change_sets
        current: list[Any] = []
        revision = 0
        for _, row_revision, kind, prev_status, record in rows:
            if row_revision != revision:
                if current:
                    change_sets.append(ChangeSet(revision, tuple(current)))
                revision, current = int(row_revision), []
            current.append(change_from_row(kind, prev_status, record))
        if current:
            change_sets.append(ChangeSet(revision, tuple(current)))
        return change_sets

    async def feed_bounds(self) -> FeedBounds:
        rows = await self._fetch(
            "SELECT (SELECT revision FROM rc_compaction), (SELECT head FROM rc_revision)"
        )
        bounds = FeedBounds(int(rows[0][0]), int(rows[0][1]))
        self._note(bounds.compact_revision, bounds.head_revision)
        return bounds

    async def wait_for_changes(self, after: int, timeout: float) -> FeedBounds:  # noqa: ASYNC109
        if self._head_seen <= after and timeout > 0:
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.add(waiter)
            try:
                await asyncio.wait((waiter,), timeout=timeout)
            finally:
                self._waiters.discard(waiter)
        if self._head_seen > after:
            return FeedBounds(self._compact_seen, self._head_seen)
        # Nothing heard: ask the database itself (the safety net under a lost NOTIFY).
        return await self.feed_bounds()

    async def compact_changes(self) -> int:
        age = self._history_max_age
        async with self._connection() as conn, conn.transaction():
            cursor = await conn.execute(
                b"UPDATE rc_compaction SET revision = greatest(revision,"
                b" (SELECT head FROM rc_revision) - %s,"
                b" coalesce((SELECT max(revision) FROM rc_changes"
                b"  WHERE %s::interval IS NOT NULL"
                b"  AND committed_at < clock_timestamp() - %s::interval), 0))"
                b" RETURNING revision",
                (self._history_limit, age, age),
            )
            row = await cursor.fetchone()
            assert row is not None
            compacted = int(row[0])
            deleted = await conn.execute(
                b"DELETE FROM rc_changes WHERE revision <= %s", (compacted,)
            )
            if deleted.rowcount:
                await conn.execute(b"SELECT pg_notify(%s, %s)", (CHANNEL, f"c{compacted}"))
        self._note(compacted, 0)
        return compacted

    # -- writes ------------------------------------------------------------------------

    async def create_run(self, draft: RunDraft) -> CreateOutcome:
        fingerprint = draft.fingerprint() if draft.request_id is not None else ""
        return await self._retrying(lambda: self._create(draft, fingerprint))

    async def _create(self, draft: RunDraft, fingerprint: str) -> CreateOutcome:
        thread_id = draft.thread_id
        async with self._transaction() as (conn, pipeline):
            await conn.execute(_LOCK_THREAD, (thread_id,))
            seen_cursor = None
            if draft.request_id is not None:
                seen_cursor = await conn.execute(
                    b"SELECT fingerprint, outcome FROM rc_requests WHERE request_id = %s",
                    (draft.request_id,),
                )
            active_cursor = await conn.execute(_LOCK_ACTIVE, (thread_id,))
            head_cursor = await conn.execute(b"SELECT head FROM rc_revision")
            await pipeline.sync()
            if seen_cursor is not None and (seen := await seen_cursor.fetchone()):
                if seen[0] != fingerprint:
                    raise RequestIdReused(draft.request_id or "", seen[1]["run"]["run_id"])
                return outcome_from_json(seen[1])
            active = [run_from_row(row) for row in await active_cursor.fetchall()]
            # Under the thread row lock: the active runs cannot change before the commit.
            plan = plan_create(draft, active, self._limits)
            head_row = await head_cursor.fetchone()
            assert head_row is not None
            await self._check_stored_runs(conn, pipeline, int(head_row[0]))

            # The tail: ONE statement (then COMMIT, in the same round trip).
            cursor = await conn.execute(
                _CREATE_TAIL,
                {
                    "ids": [r.run_id for r in plan.interrupt],
                    "prevs": [r.status.value for r in plan.interrupt],
                    "action": plan.cancel_action.value,
                    "reason": interrupt_reason(draft.run_id, draft.multitask_strategy)
                    if plan.interrupt
                    else None,
                    "run_id": draft.run_id,
                    "thread_id": thread_id,
                    "assistant_id": draft.assistant_id,
                    "on_disconnect": draft.on_disconnect.value,
                    "strategy": draft.multitask_strategy.value,
                    "metadata": draft.metadata_json,
                    "kwargs": draft.kwargs_json,
                    "timeout": draft.timeout,
                    "request_id": draft.request_id,
                    "max_attempts": draft.max_attempts,
                    "fingerprint": fingerprint,
                    "queued_behind": Jsonb(list(plan.queued_behind)),
                    "channel": CHANNEL,
                },
            )
        rows = await cursor.fetchall()
        run = run_from_row(rows[0], 1)
        interrupted = sorted((run_from_row(row, 1) for row in rows[1:]), key=_by_creation)
        self._committed(run.create_revision)
        return CreateOutcome(run, tuple(interrupted), plan.queued_behind)

    async def _check_stored_runs(
        self, conn: _Conn, pipeline: psycopg.AsyncPipeline, head: int
    ) -> None:
        """`max_stored_runs`: the runs are counted only when the bounds prove neither
        room nor a full store (see `stored_runs`); not under a lock, so creates in
        flight together may pass it."""
        limit = self._limits.max_stored_runs
        if self._stored_runs.proves_room(head, limit):
            return
        full = self._stored_runs.proves_full(head, limit)
        if full is not None:  # refused (full >= limit) without reading every run again
            check_stored_runs(full, self._limits)
        # The count and the revision it holds at: one statement, one snapshot.
        cursor = await conn.execute(b"SELECT count(*), (SELECT head FROM rc_revision) FROM rc_runs")
        await pipeline.sync()
        row = await cursor.fetchone()
        assert row is not None
        self._stored_runs.counted(int(row[0]), int(row[1]))
        check_stored_runs(int(row[0]), self._limits)

    async def set_status(self, change: StatusChange) -> TransitionOutcome:
        return await self._retrying(lambda: self._set_status(change))

    async def _set_status(self, change: StatusChange) -> TransitionOutcome:
        async with self._transaction() as (conn, _):
            earlier_cursor = None
            if change.status is RunStatus.RUNNING:
                # Sent with the locks (one round trip), read after them: the runs of
                # the thread ahead of this one that are still active (ENQUEUE FIFO).
                await conn.execute(_LOCK_THREAD_OF_RUN, (change.run_id,))
                earlier_cursor = await conn.execute(_EARLIER_ACTIVE, (change.run_id,))
            run = await self._lock_run(conn, change.run_id, thread_locked=True)
            earlier: list[str] = []
            if earlier_cursor is not None:
                earlier = [row[0] for row in await earlier_cursor.fetchall()]
            if not check_transition(run, change, earlier):
                return TransitionOutcome(run, changed=False)
            target = apply_transition(run, change, run.updated_at, run.mod_revision)
            cursor = await conn.execute(
                _SET_STATUS_TAIL,
                {
                    "status": target.status.value,
                    "error": target.error,
                    "worker_id": target.worker_id,
                    "attempt": target.attempt,
                    "lease_ttl": lease_ttl_micros(target.lease_ttl),
                    "run_id": run.run_id,
                    "prev_status": run.status.value,
                    "channel": CHANNEL,
                },
            )
        # Fetched after the COMMIT went out in the same round trip.
        updated = await self._answer(cursor)
        return TransitionOutcome(updated, changed=True)

    async def cancel_run(self, run_id: str, action: CancelAction, reason: str) -> CancelOutcome:
        return await self._retrying(lambda: self._cancel(run_id, action, reason))

    async def _cancel(self, run_id: str, action: CancelAction, reason: str) -> CancelOutcome:
        async with self._transaction() as (conn, _):
            run = await self._lock_run(conn, run_id)
            if not run.is_active:
                return CancelOutcome(run, cancelled=False)
            cursor = await conn.execute(
                _CANCEL_TAIL,
                {
                    "action": action.value,
                    "reason": reason,
                    "run_id": run_id,
                    "prev_status": run.status.value,
                    "channel": CHANNEL,
                },
            )
        cancelled = await self._answer(cursor)
        return CancelOutcome(cancelled, cancelled=True)

    async def delete_run(self, run_id: str, expected_mod_revision: int | None) -> DeleteOutcome:
        return await self._retrying(lambda: self._delete(run_id, expected_mod_revision))

    async def _delete(self, run_id: str, expected_mod_revision: int | None) -> DeleteOutcome:
        async with self._transaction() as (conn, _):
            run = await self._lock_run(conn, run_id)
            if expected_mod_revision is not None and expected_mod_revision != run.mod_revision:
                raise RevisionMismatch(run_id, expected_mod_revision, run.mod_revision)
            if run.is_active:
                raise RunActive(run_id, run.status)
            cursor = await conn.execute(_DELETE_TAIL, {"run_id": run_id, "channel": CHANNEL})
        row = await cursor.fetchone()
        assert row is not None
        revision = int(row[0])
        self._committed(revision)
        return DeleteOutcome(run, revision)

    # -- deadlines and retention (every replica runs them; each takes effect once) ----

    async def expire_due(self, now: datetime, limit: int) -> list[Run]:
        async with self._transaction() as (conn, pipeline):
            due = await self._lock_batch(
                conn,
                pipeline,
                f"status IN {ACTIVE_SQL} AND deadline <= %s",
                "deadline",
                (now, limit),
            )
            cursors = [  # each expiry is its own revision
                await conn.execute(
                    _EXPIRE_TAIL,
                    {"run_id": run.run_id, "prev_status": run.status.value, "channel": CHANNEL},
                )
                for run in due
            ]
        # Read once the COMMIT went out with the writes (one round trip).
        expired = [run_from_row(row) for c in cursors if (row := await c.fetchone())]
        if expired:
            self._committed(expired[-1].mod_revision)
        return expired

    async def next_lease_lapse(self) -> datetime | None:
        rows = await self._fetch(
            "SELECT min(lease_expires_at) FROM rc_runs WHERE status = 'running'"
            " AND lease_expires_at IS NOT NULL"
        )
        return None if rows[0][0] is None else utc(rows[0][0])

    async def expire_leases(self, now: datetime, limit: int) -> list[Run]:
        async with self._transaction() as (conn, pipeline):
            lapsed = await self._lock_batch(
                conn,
                pipeline,
                "status = 'running' AND lease_expires_at <= %s",
                "lease_expires_at",
                (now, limit),
            )
            cursors = []
            for run in lapsed:  # each lapse is its own revision
                target = apply_lease_lapse(run, run.updated_at, run.mod_revision)
                cursors.append(
                    await conn.execute(
                        _LAPSE_TAIL,
                        {
                            "status": target.status.value,
                            "error": target.error,
                            "worker_id": target.worker_id,
                            "run_id": run.run_id,
                            "prev_status": run.status.value,
                            "channel": CHANNEL,
                        },
                    )
                )
        changed = [run_from_row(row) for c in cursors if (row := await c.fetchone())]
        if changed:
            self._committed(changed[-1].mod_revision)
        return changed

    async def renew_lease(self, run_id: str, worker_id: str) -> tuple[Run, datetime]:
        for _ in range(_ATTEMPTS):
            rows = await self._fetch(_RENEW, (run_id, worker_id))
            if rows:
                return run_from_row(rows[0]), utc(rows[0][len(Run._fields)])
            # Says why (or not found). It passes only if the worker claimed the run
            # again between the two reads (a lapse, then a new claim): renew that claim.
            run = await self.get_run(run_id)
            check_renewal(run, worker_id)
        raise LeaseNotHeld(run_id, run.status, run.worker_id)  # flapping: not ours to renew

    async def purge_finished(self, finished_before: datetime, limit: int) -> list[Run]:
        async with self._transaction() as (conn, pipeline):
            purged = await self._lock_batch(
                conn,
                pipeline,
                f"status NOT IN {ACTIVE_SQL} AND updated_at <= %s",
                "updated_at",
                (finished_before, limit),
            )
            revision_cursor = None
            for run in purged:  # each deletion is its own revision
                revision_cursor = await conn.execute(
                    _DELETE_TAIL, {"run_id": run.run_id, "channel": CHANNEL}
                )
        head = None
        if revision_cursor is not None and (row := await revision_cursor.fetchone()):
            head = int(row[0])
        if head is not None:
            self._committed(head)
            await self._forget_empty_threads({run.thread_id for run in purged})
        return purged

    async def _forget_empty_threads(self, thread_ids: set[str]) -> None:
        """Delete the rows of threads left without runs, skipping any a writer holds.

        Two statements, because READ COMMITTED re-checks a locked row against its own
        WHERE clause but not a sub-select's snapshot: one statement could lock a thread
        a create had just filled, still see it empty, and fail on the new run's foreign
        key. So: lock the candidates first (a create upserts its thread row first, so
        from here none can add a run), then delete those still empty, read in a fresh
        snapshot that sees every run committed before the lock.
        """
        async with self._transaction() as (conn, pipeline):
            locked = await conn.execute(
                b"SELECT thread_id FROM rc_threads WHERE thread_id = ANY(%s::text[])"
                b" FOR UPDATE SKIP LOCKED",
                (sorted(thread_ids),),
            )
            await pipeline.sync()
            held = [row[0] for row in await locked.fetchall()]
            if held:
                await conn.execute(
                    b"DELETE FROM rc_threads t WHERE t.thread_id = ANY(%s::text[])"
                    b" AND NOT EXISTS (SELECT 1 FROM rc_runs r WHERE r.thread_id = t.thread_id)",
                    (held,),
                )

    # -- internals ---------------------------------------------------------------------

    async def _answer(self, cursor: psycopg.AsyncCursor[Any]) -> Run:
        """The run a write's tail returned (read once its COMMIT went out); this process
        learns the new revision without waiting for its own NOTIFY."""
        row = await cursor.fetchone()
        assert row is not None
        run = run_from_row(row)
        self._committed(run.mod_revision)
        return run

    async def _lock_batch(
        self,
        conn: _Conn,
        pipeline: psycopg.AsyncPipeline,
        where: str,
        order: str,
        params: tuple[Any, ...],
    ) -> list[Run]:
        """Lock and read up to `params[-1]` runs matching `where`, in `order`, skipping
        runs another transaction holds (every replica's janitor runs this at once)."""
        cursor = await conn.execute(
            f"SELECT {RUN_COLUMNS} FROM rc_runs WHERE {where} ORDER BY {order} LIMIT %s"
            f" FOR UPDATE SKIP LOCKED".encode(),
            params,
        )
        await pipeline.sync()
        return [run_from_row(row) for row in await cursor.fetchall()]

    async def _lock_run(self, conn: _Conn, run_id: str, *, thread_locked: bool = False) -> Run:
        """Lock the run's thread, then the run (the one lock order), and read it."""
        if not thread_locked:
            await conn.execute(_LOCK_THREAD_OF_RUN, (run_id,))
        cursor = await conn.execute(_LOCK_RUN, (run_id,))
        row = await cursor.fetchone()
        if row is None:
            raise RunNotFound(run_id)
        return run_from_row(row)

    async def _retrying(self, operation: Callable[[], Awaitable[_T]]) -> _T:
        """Run `operation` again when it lost a race the database resolved by aborting
        it (a deadlock victim, a serialisation failure, a request_id taken meanwhile, a
        thread row forgotten by the janitor between our insert and our lock)."""
        for attempt in range(1, _ATTEMPTS + 1):
            try:
                return await operation()
            except (*_LOST_RACE, UniqueViolation, ForeignKeyViolation):
                if attempt == _ATTEMPTS:
                    raise
        raise AssertionError("unreachable")  # pragma: no cover

    def _note(self, compacted: int, head: int) -> None:
        woke = head > self._head_seen
        self._head_seen = max(self._head_seen, head)
        self._compact_seen = max(self._compact_seen, compacted)
        if woke:
            self._wake()

    def _committed(self, revision: int) -> None:
        """Our own commit: our feed reader needs no NOTIFY round trip to learn of it."""
        self._note(0, revision)

    def _wake(self) -> None:
        waiters, self._waiters = self._waiters, set()
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    async def _listen(self) -> None:
        """Follow NOTIFYs on a dedicated connection; reconnect when it drops."""
        delay = 0.05
        while True:
            try:
                conn = await psycopg.AsyncConnection.connect(
                    self._url, autocommit=True, options="-c TimeZone=UTC"
                )
                async with conn:
                    await conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(CHANNEL)))
                    delay = 0.05
                    # Anything committed while we were not listening: look once.
                    rows = await conn.execute(
                        b"SELECT (SELECT revision FROM rc_compaction),"
                        b" (SELECT head FROM rc_revision)"
                    )
                    row = await rows.fetchone()
                    if row is not None:
                        self._note(int(row[0]), int(row[1]))
                    async for notify in conn.notifies():
                        payload = notify.payload
                        if payload.startswith("h"):
                            self._note(0, int(payload[1:]))
                        elif payload.startswith("c"):
                            self._note(int(payload[1:]), 0)
            except asyncio.CancelledError:
                raise
            except Exception as error:
                log.warning("listening for changes failed (%s); retrying in %.2fs", error, delay)
                self._wake()  # feed readers fall back to asking the database
                await asyncio.sleep(delay)
                delay = min(delay * 2, _LISTEN_RETRY_MAX)
