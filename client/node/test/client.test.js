// Unary RPCs and ErrorInfo against the real Python server, over both transports:
// the same tests for gRPC (the gRPC port) and Connect (the HTTP listener).
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';

import {
  RunControlClient,
  RunControlError,
  RunStatus,
  MultitaskStrategy,
  CancelAction,
  Code,
  durationFromMs,
  runMetadata,
  runKwargs,
  timestampToDate,
} from '../dist/index.js';
import { startServer, TRANSPORTS } from '../support/python-server.js';

/** @type {import('../support/python-server.js').Server} */
let server;

before(async () => {
  server = await startServer();
});

after(async () => {
  if (server) {
    const { code, signal } = await server.stop(15_000);
    assert.equal(signal, null, `server killed by ${signal}\n${server.stderr()}`);
    assert.equal(code, 0, `server exit code ${code}\n${server.stderr()}`);
  }
});

const thread = () => `thread-${randomUUID()}`;

/**
 * Assert that `promise` rejects with a RunControlError and return it.
 * @param {Promise<unknown>} promise
 * @returns {Promise<RunControlError>}
 */
async function rejection(promise) {
  try {
    await promise;
  } catch (err) {
    assert.ok(err instanceof RunControlError, `expected RunControlError, got ${err}`);
    assert.ok(err instanceof Error);
    return err;
  }
  assert.fail('expected the call to fail');
}

/** @template T @param {T | undefined} value @returns {T} */
function defined(value) {
  assert.ok(value !== undefined, 'expected a value');
  return value;
}

for (const transport of TRANSPORTS) {
  describe(transport, () => {
    /** @type {RunControlClient} */
    let client;

    before(async () => {
      client = new RunControlClient(server.addressFor(transport), { transport, deadlineMs: 10_000 });
      assert.equal(client.transport, transport);
      await client.waitForReady(10_000);
    });

    after(() => client?.close());

    it('a deadline beyond what a Node timer holds does not fail the call at once', async () => {
      // A setTimeout past 2^31 - 1 ms fires after 1 ms: such deadlines are clamped.
      const patient = new RunControlClient(server.addressFor(transport), { transport, deadlineMs: 1e12 });
      try {
        await patient.waitForReady(1e12);
        const run = defined((await patient.createRun({ threadId: thread() })).run);
        const fetched = defined((await patient.getRun({ runId: run.runId }, { deadlineMs: 3e9 })).run);
        assert.equal(fetched.runId, run.runId);
      } finally {
        patient.close();
      }
    });

    it('create, get, list and cancel a run', async () => {
      const threadId = thread();
      const started = Date.now();
      const created = await client.createRun({
        threadId,
        // A Struct is a plain JSON object in protobuf-es.
        metadata: { user: 'ada', n: 3, nested: { ok: true, list: [1, 'two', null] } },
        requestId: `req-${randomUUID()}`,
      });
      const run = defined(created.run);
      assert.equal(run.threadId, threadId);
      assert.equal(run.status, RunStatus.PENDING);
      assert.equal(RunStatus[run.status], 'PENDING');
      assert.equal(run.multitaskStrategy, MultitaskStrategy.REJECT);
      assert.equal(created.replayed, false);
      assert.deepEqual(created.interruptedRuns, []);
      // int64 revisions are bigint.
      assert.equal(typeof run.createRevision, 'bigint');
      assert.ok(run.createRevision > 0n);
      assert.equal(run.modRevision, run.createRevision);
      // Sent as a Struct (still accepted), read back as exact JSON text (the client's header).
      assert.equal(run.metadata, undefined);
      assert.deepEqual(runMetadata(run), { user: 'ada', n: 3, nested: { ok: true, list: [1, 'two', null] } });
      assert.deepEqual(runKwargs(run), {});
      assert.equal(run.kwargsJson, ''); // {} is not sent
      assert.equal(run.attempt, 0);
      assert.equal(run.maxAttempts, 1);
      assert.equal(run.leaseTtl, undefined);
      const createdAt = timestampToDate(run.createdAt);
      assert.ok(createdAt instanceof Date);
      assert.ok(Math.abs(createdAt.getTime() - started) < 60_000, `created_at ${createdAt.toISOString()}`);
      assert.equal(run.error, undefined); // unset proto3 optional
      assert.equal(run.cancelReason, undefined);

      const got = await client.getRun({ runId: run.runId });
      assert.deepEqual(got.run, run);

      const listed = await client.listRuns({ threadId });
      assert.deepEqual(
        listed.runs.map((r) => r.runId),
        [run.runId],
      );
      assert.equal(listed.nextPageToken, '');
      assert.ok(listed.revision >= run.modRevision);

      const inflight = await client.hasInflight({ threadId });
      assert.equal(inflight.hasInflight, true);
      assert.deepEqual(inflight.runIds, [run.runId]);

      const cancelled = await client.cancelRun({ runId: run.runId, reason: 'user left' });
      const cancelledRun = defined(cancelled.run);
      assert.equal(cancelled.cancelled, true);
      assert.equal(cancelledRun.status, RunStatus.INTERRUPTED);
      assert.equal(cancelledRun.cancelAction, CancelAction.INTERRUPT);
      assert.equal(cancelledRun.cancelReason, 'user left');
      assert.ok(cancelledRun.modRevision > run.modRevision);

      // Cancel is idempotent.
      const again = await client.cancelRun({ runId: run.runId });
      assert.equal(again.cancelled, false);
      assert.equal(again.run?.modRevision, cancelledRun.modRevision);

      const interrupted = await client.listRuns({ threadId, statuses: [RunStatus.INTERRUPTED] });
      assert.deepEqual(
        interrupted.runs.map((r) => r.runId),
        [run.runId],
      );
      const pending = await client.listRuns({ threadId, statuses: [RunStatus.PENDING] });
      assert.deepEqual(pending.runs, []);

      const deleted = await client.deleteRun({ runId: run.runId });
      assert.equal(deleted.run?.runId, run.runId);
      assert.ok(deleted.revision > cancelledRun.modRevision);
    });

    it('request_id replays the first answer', async () => {
      const request = { threadId: thread(), requestId: `req-${randomUUID()}` };
      const first = await client.createRun(request);
      const second = await client.createRun(request);
      assert.equal(second.replayed, true);
      assert.equal(second.run?.runId, first.run?.runId);
    });

    it('THREAD_BUSY carries inflight_run_ids in ErrorInfo metadata', async () => {
      const threadId = thread();
      const first = await client.createRun({ threadId });
      const err = await rejection(client.createRun({ threadId }));
      assert.equal(err.code, 9);
      assert.equal(err.code, Code.FailedPrecondition);
      assert.equal(err.codeName, 'FAILED_PRECONDITION');
      assert.equal(err.reason, 'THREAD_BUSY');
      assert.equal(err.metadata.thread_id, threadId);
      assert.deepEqual(err.metadata.inflight_run_ids.split(','), [first.run?.runId]);
      assert.equal(typeof err.details, 'string');
      assert.ok(err.details.length > 0);
      assert.match(err.message, /^FAILED_PRECONDITION: .* \[THREAD_BUSY\]$/);
      assert.equal(err.errorInfos[0]?.domain, 'runcontrol');
      assert.equal(err.status?.code, 9);
      assert.equal(err.status?.details[0]?.typeUrl, 'type.googleapis.com/google.rpc.ErrorInfo');
      assert.ok(err.trailers instanceof Headers);
    });

    it('NOT_FOUND is RUN_NOT_FOUND', async () => {
      const runId = `no-such-run-${randomUUID()}`;
      const err = await rejection(client.getRun({ runId }));
      assert.equal(err.code, 5);
      assert.equal(err.codeName, 'NOT_FOUND');
      assert.equal(err.reason, 'RUN_NOT_FOUND');
      assert.deepEqual(err.metadata, { run_id: runId });
    });

    it('INVALID_ARGUMENT names the field', async () => {
      const err = await rejection(client.getRun({ runId: '' }));
      assert.equal(err.codeName, 'INVALID_ARGUMENT');
      assert.equal(err.reason, 'INVALID_ARGUMENT');
      assert.equal(err.metadata.field, 'run_id');
    });

    it('int64 compare-and-set takes bigint revisions', async () => {
      const run = defined((await client.createRun({ threadId: thread() })).run);
      const mismatch = await rejection(
        client.setRunStatus({
          runId: run.runId,
          status: RunStatus.RUNNING,
          workerId: 'w1',
          expectedModRevision: run.modRevision + 1000n,
        }),
      );
      assert.equal(mismatch.codeName, 'ABORTED');
      assert.equal(mismatch.reason, 'REVISION_MISMATCH');
      assert.equal(mismatch.metadata.mod_revision, String(run.modRevision));

      const claimed = await client.setRunStatus({
        runId: run.runId,
        status: RunStatus.RUNNING,
        workerId: 'w1',
        expectedModRevision: run.modRevision,
      });
      const claimedRun = defined(claimed.run);
      assert.equal(claimed.changed, true);
      assert.equal(claimedRun.status, RunStatus.RUNNING);
      assert.equal(claimedRun.workerId, 'w1');

      const other = await rejection(client.setRunStatus({ runId: run.runId, status: RunStatus.RUNNING, workerId: 'w2' }));
      assert.equal(other.reason, 'ALREADY_CLAIMED');

      const done = await client.setRunStatus({
        runId: run.runId,
        status: RunStatus.SUCCESS,
        workerId: 'w1',
        expectedModRevision: claimedRun.modRevision,
      });
      assert.equal(done.run?.status, RunStatus.SUCCESS);
    });

    it('a claim with a lease is renewed by its worker, refused to anyone else', async () => {
      const run = defined((await client.createRun({ threadId: thread(), maxAttempts: 2 })).run);
      assert.equal(run.maxAttempts, 2);
      const claimed = await client.setRunStatus({
        runId: run.runId,
        status: RunStatus.RUNNING,
        workerId: 'w1',
        leaseTtl: durationFromMs(30_000),
      });
      assert.equal(claimed.run?.attempt, 1);
      assert.equal(claimed.run?.leaseTtl?.seconds, 30n);
      const renewed = await client.renewRunLease({ runId: run.runId, workerId: 'w1' });
      assert.equal(renewed.run?.modRevision, claimed.run?.modRevision); // no revision used
      const expires = timestampToDate(renewed.leaseExpiresAt);
      assert.ok(expires && expires > new Date(Date.now() + 20_000), `lease expires ${expires?.toISOString()}`);
      const refused = await rejection(client.renewRunLease({ runId: run.runId, workerId: 'w2' }));
      assert.equal(refused.codeName, 'FAILED_PRECONDITION');
      assert.equal(refused.reason, 'LEASE_NOT_HELD');
      assert.equal(refused.metadata.worker_id, 'w1');
    });

    it('waitRun answers when the run finishes (deadline from the request)', async () => {
      const run = defined((await client.createRun({ threadId: thread() })).run);
      const open = await client.waitRun({ runId: run.runId, timeout: { seconds: 0n, nanos: 1_000_000 } });
      assert.equal(open.done, false);
      await client.setRunStatus({ runId: run.runId, status: RunStatus.RUNNING, workerId: 'w1' });
      const waiting = client.waitRun({ runId: run.runId, timeout: durationFromMs(30_000) });
      await client.setRunStatus({ runId: run.runId, status: RunStatus.SUCCESS, workerId: 'w1' });
      const finished = await waiting;
      assert.equal(finished.done, true);
      assert.equal(finished.run?.status, RunStatus.SUCCESS);
    });
  });
}
