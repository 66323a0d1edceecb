"""The reference encoding of a run: a `RunRecord` built the ordinary way, with
protobuf's own setters. The servicer never uses it (it answers bytes from
`servicer.wire`); the tests hold the fast encoder byte-equal to this.
"""

from __future__ import annotations

from runcontrol.v1 import run_pb2
from runcontrol_server.domain.model import Run
from runcontrol_server.servicer.convert import (
    CANCEL_ACTION_TO_PROTO,
    DISCONNECT_TO_PROTO,
    EMPTY_JSON,
    STATUS_TO_PROTO,
    STRATEGY_TO_PROTO,
)


def run_to_proto(
    run: Run, target: run_pb2.RunRecord | None = None, *, payload_json: bool = False
) -> run_pb2.RunRecord:
    """The wire record of a run. Equal runs always give byte-equal records.

    `payload_json`: the payloads as `metadata_json` / `kwargs_json` text (omitted for
    `{}`) instead of Structs, for calls that asked for it (see `payload_format`).
    """
    record = target if target is not None else run_pb2.RunRecord()
    record.run_id = run.run_id
    record.thread_id = run.thread_id
    record.status = STATUS_TO_PROTO[run.status]
    record.on_disconnect = DISCONNECT_TO_PROTO[run.on_disconnect]
    record.multitask_strategy = STRATEGY_TO_PROTO[run.multitask_strategy]
    if payload_json:
        if run.metadata_json != EMPTY_JSON:
            record.metadata_json = run.metadata_json
        if run.kwargs_json != EMPTY_JSON:
            record.kwargs_json = run.kwargs_json
    else:
        record.metadata.update(run.metadata)
        record.kwargs.update(run.kwargs)
    record.created_at.FromDatetime(run.created_at)
    record.updated_at.FromDatetime(run.updated_at)
    record.cancel_action = CANCEL_ACTION_TO_PROTO[run.cancel_action]
    record.create_revision = run.create_revision
    record.mod_revision = run.mod_revision
    # proto3 `optional`: presence matters to clients, so set only what exists.
    if run.assistant_id is not None:
        record.assistant_id = run.assistant_id
    if run.error is not None:
        record.error = run.error
    if run.cancel_reason is not None:
        record.cancel_reason = run.cancel_reason
    if run.worker_id is not None:
        record.worker_id = run.worker_id
    if run.request_id is not None:
        record.request_id = run.request_id
    if run.deadline is not None:
        record.deadline.FromDatetime(run.deadline)
    record.attempt = run.attempt
    record.max_attempts = run.max_attempts
    if run.lease_ttl is not None:
        record.lease_ttl.FromTimedelta(run.lease_ttl)
    return record
