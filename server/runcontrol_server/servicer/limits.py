"""Request limits the servicer enforces before anything reaches the domain."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta


@dataclass(frozen=True, slots=True)
class Limits:
    """Server-side bounds on request sizes (all checked in `validation`)."""

    # Ids (run_id, thread_id, assistant_id, worker_id, request_id): 1..this many characters.
    max_id_length: int = 128
    # metadata and kwargs, each, as a serialized google.protobuf.Struct.
    max_payload_bytes: int = 1 << 20  # 1 MiB: long message histories fit
    # Free text: SetRunStatus.error and CancelRun.reason.
    max_text_length: int = 4096
    default_page_size: int = 50
    max_page_size: int = 1000
    # WatchRuns.run_ids entries.
    max_run_ids_filter: int = 1000
    # CreateRun.timeout: a deadline must stay a representable timestamp, so absurd
    # (but proto-valid) durations are refused instead of overflowing datetime.
    max_run_timeout: timedelta = timedelta(days=3660)
