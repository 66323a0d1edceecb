"""Request limits the servicer enforces before anything reaches the domain.

The bounds of the domain and the stores (watchers and waiters per server, runs per
thread and in all) are theirs: `RunManager` and `StoreLimits`.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

# A quarter of the server-wide bounds (`max_watchers`, `max_waiters`): one client cannot
# take every slot, and four clients each at their bound still fit.
DEFAULT_MAX_WATCHERS_PER_PEER = 2500
DEFAULT_MAX_WAITERS_PER_PEER = 2500
# metadata and kwargs, each: 1 MiB, so the original registry's kwargs (whole message
# histories) fit.
DEFAULT_MAX_PAYLOAD_BYTES = 1 << 20


@dataclass(frozen=True, slots=True)
class Limits:
    """Server-side bounds on request sizes (checked in `validation`) and on the calls
    one peer may hold open (checked in `peers`)."""

    # Ids (run_id, thread_id, assistant_id, worker_id, request_id): 1..this many characters.
    max_id_length: int = 128
    # metadata and kwargs, each, as a serialized google.protobuf.Struct.
    max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES
    # Free text: SetRunStatus.error and CancelRun.reason.
    max_text_length: int = 4096
    default_page_size: int = 50
    max_page_size: int = 1000
    # WatchRuns.run_ids entries.
    max_run_ids_filter: int = 1000
    # CreateRun.timeout: a deadline must stay a representable timestamp, so absurd
    # (but proto-valid) durations are refused instead of overflowing datetime.
    max_run_timeout: timedelta = timedelta(days=3660)
    # CreateRun.max_attempts: claims a run may have when its workers' leases lapse.
    max_attempts: int = 100
    # SetRunStatus.lease_ttl: shorter leases would be lost to one slow renewal; longer
    # ones leave a dead worker's run RUNNING for too long.
    min_lease_ttl: timedelta = timedelta(seconds=1)
    max_lease_ttl: timedelta = timedelta(hours=1)
    # WatchRuns streams and WaitRun calls one peer (client host) may have open at once.
    max_watchers_per_peer: int = DEFAULT_MAX_WATCHERS_PER_PEER
    max_waiters_per_peer: int = DEFAULT_MAX_WAITERS_PER_PEER
