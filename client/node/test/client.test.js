'use strict';
// Unary RPCs and ErrorInfo decoding against the real Python server.
const { test, before, after } = require('node:test');
const assert = require('node:assert/strict');
const { randomUUID } = require('node:crypto');

const {
  RunControlClient,
  RunControlError,
  durationFromMs,
  toStruct,
  runMetadata,
  runKwargs,
  timestampToDate,
} = require('../src/index.js');
const { startServer } = require('../support/python-server.js');

/** @type {Awaited<ReturnType<typeof startServer>>} */
let server;
/** @type {RunControlClient} */
let client;

before(async () => {
  server = await startServer();
  client = new RunControlClient(server.address, { deadlineMs: 10_000 });
  await client.waitForReady(10_000);
});

after(async () => {
  client?.close();
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

test('create, get, list and cancel a run', async () => {
  const threadId = thread();
  const before = Date.now();
  const created = await client.createRun({
    thread_id: threadId,
    metadata: toStruct({ user: 'ada', n: 3, nested: { ok: true, list: [1, 'two', null] } }),
    request_id: `req-${randomUUID()}`,
  });
  const run = created.run;
  assert.equal(run.thread_id, threadId);
  assert.equal(run.status, 'RUN_STATUS_PENDING');
  assert.equal(run.multitask_strategy, 'MULTITASK_STRATEGY_REJECT');
  assert.equal(created.replayed, false);
  assert.deepEqual(created.interrupted_runs, []);
  // int64 revisions are decimal strings.
  assert.match(run.create_revision, /^[1-9][0-9]*$/);
  assert.equal(run.mod_revision, run.create_revision);
  // Sent as a Struct (still accepted), read back as exact JSON text (the client's header).
  assert.equal(run.metadata, null);
  assert.deepEqual(runMetadata(run), { user: 'ada', n: 3, nested: { ok: true, list: [1, 'two', null] } });
  assert.deepEqual(runKwargs(run), {});
  assert.equal(run.kwargs_json, ''); // {} is not sent
  assert.equal(run.attempt, 0);
  assert.equal(run.max_attempts, 1);
  assert.equal(run.lease_ttl, null);
  const createdAt = timestampToDate(run.created_at);
  assert.ok(createdAt instanceof Date);
  assert.ok(Math.abs(createdAt.getTime() - before) < 60_000, `created_at ${createdAt.toISOString()}`);
  assert.equal(run.error, undefined); // unset proto3 optional
  assert.equal(run.cancel_reason, undefined);

  const got = await client.getRun({ run_id: run.run_id });
  assert.deepEqual(got.run, run);

  const listed = await client.listRuns({ thread_id: threadId });
  assert.deepEqual(
    listed.runs.map((r) => r.run_id),
    [run.run_id],
  );
  assert.equal(listed.next_page_token, '');
  assert.ok(BigInt(listed.revision) >= BigInt(run.mod_revision));

  const inflight = await client.hasInflight({ thread_id: threadId });
  assert.equal(inflight.has_inflight, true);
  assert.deepEqual(inflight.run_ids, [run.run_id]);

  const cancelled = await client.cancelRun({ run_id: run.run_id, reason: 'user left' });
  assert.equal(cancelled.cancelled, true);
  assert.equal(cancelled.run.status, 'RUN_STATUS_INTERRUPTED');
  assert.equal(cancelled.run.cancel_action, 'CANCEL_ACTION_INTERRUPT');
  assert.equal(cancelled.run.cancel_reason, 'user left');
  assert.ok(BigInt(cancelled.run.mod_revision) > BigInt(run.mod_revision));

  // Cancel is idempotent.
  const again = await client.cancelRun({ run_id: run.run_id });
  assert.equal(again.cancelled, false);
  assert.equal(again.run.mod_revision, cancelled.run.mod_revision);

  const interrupted = await client.listRuns({ thread_id: threadId, statuses: ['RUN_STATUS_INTERRUPTED'] });
  assert.deepEqual(
    interrupted.runs.map((r) => r.run_id),
    [run.run_id],
  );
  const pending = await client.listRuns({ thread_id: threadId, statuses: ['RUN_STATUS_PENDING'] });
  assert.deepEqual(pending.runs, []);

  const deleted = await client.deleteRun({ run_id: run.run_id });
  assert.equal(deleted.run.run_id, run.run_id);
  assert.ok(BigInt(deleted.revision) > BigInt(cancelled.run.mod_revision));
});

test('request_id replays the first answer', async () => {
  const request = { thread_id: thread(), request_id: `req-${randomUUID()}` };
  const first = await client.createRun(request);
  const second = await client.createRun(request);
  assert.equal(second.replayed, true);
  assert.equal(second.run.run_id, first.run.run_id);
});

test('THREAD_BUSY carries inflight_run_ids in ErrorInfo metadata', async () => {
  const threadId = thread();
  const first = await client.createRun({ thread_id: threadId });
  const err = await rejection(client.createRun({ thread_id: threadId }));
  assert.equal(err.code, 9);
  assert.equal(err.codeName, 'FAILED_PRECONDITION');
  assert.equal(err.reason, 'THREAD_BUSY');
  assert.equal(err.metadata.thread_id, threadId);
  assert.deepEqual(err.metadata.inflight_run_ids.split(','), [first.run.run_id]);
  assert.equal(typeof err.details, 'string');
  assert.ok(err.details.length > 0);
  assert.match(err.message, /^FAILED_PRECONDITION: .* \[THREAD_BUSY\]$/);
  assert.equal(err.status?.errorInfos[0]?.domain, 'runcontrol');
  assert.equal(err.status?.code, 9);
});

test('NOT_FOUND is RUN_NOT_FOUND', async () => {
  const runId = `no-such-run-${randomUUID()}`;
  const err = await rejection(client.getRun({ run_id: runId }));
  assert.equal(err.code, 5);
  assert.equal(err.codeName, 'NOT_FOUND');
  assert.equal(err.reason, 'RUN_NOT_FOUND');
  assert.deepEqual(err.metadata, { run_id: runId });
});

test('INVALID_ARGUMENT names the field', async () => {
  const err = await rejection(client.getRun({ run_id: '' }));
  assert.equal(err.codeName, 'INVALID_ARGUMENT');
  assert.equal(err.reason, 'INVALID_ARGUMENT');
  assert.equal(err.metadata.field, 'run_id');
});

test('int64 compare-and-set accepts string, number and bigint', async () => {
  const { run } = await client.createRun({ thread_id: thread() });
  const mismatch = await rejection(
    client.setRunStatus({
      run_id: run.run_id,
      status: 'RUN_STATUS_RUNNING',
      worker_id: 'w1',
      expected_mod_revision: (BigInt(run.mod_revision) + 1000n).toString(),
    }),
  );
  assert.equal(mismatch.codeName, 'ABORTED');
  assert.equal(mismatch.reason, 'REVISION_MISMATCH');
  assert.equal(mismatch.metadata.mod_revision, run.mod_revision);

  const claimed = await client.setRunStatus({
    run_id: run.run_id,
    status: 'RUN_STATUS_RUNNING',
    worker_id: 'w1',
    expected_mod_revision: BigInt(run.mod_revision),
  });
  assert.equal(claimed.changed, true);
  assert.equal(claimed.run.status, 'RUN_STATUS_RUNNING');
  assert.equal(claimed.run.worker_id, 'w1');

  const other = await rejection(client.setRunStatus({ run_id: run.run_id, status: 'RUN_STATUS_RUNNING', worker_id: 'w2' }));
  assert.equal(other.reason, 'ALREADY_CLAIMED');

  const done = await client.setRunStatus({
    run_id: run.run_id,
    status: 3, // enums also accept numbers: RUN_STATUS_SUCCESS
    worker_id: 'w1',
    expected_mod_revision: Number(claimed.run.mod_revision),
  });
  assert.equal(done.run.status, 'RUN_STATUS_SUCCESS');
});

test('a claim with a lease is renewed by its worker, refused to anyone else', async () => {
  const { run } = await client.createRun({ thread_id: thread(), max_attempts: 2 });
  assert.equal(run.max_attempts, 2);
  const claimed = await client.setRunStatus({
    run_id: run.run_id,
    status: 'RUN_STATUS_RUNNING',
    worker_id: 'w1',
    lease_ttl: durationFromMs(30_000),
  });
  assert.equal(claimed.run.attempt, 1);
  assert.equal(Number(claimed.run.lease_ttl.seconds), 30);
  const renewed = await client.renewRunLease({ run_id: run.run_id, worker_id: 'w1' });
  assert.equal(renewed.run.mod_revision, claimed.run.mod_revision); // no revision used
  assert.ok(timestampToDate(renewed.lease_expires_at) > new Date(Date.now() + 20_000));
  const refused = await rejection(client.renewRunLease({ run_id: run.run_id, worker_id: 'w2' }));
  assert.equal(refused.codeName, 'FAILED_PRECONDITION');
  assert.equal(refused.reason, 'LEASE_NOT_HELD');
  assert.equal(refused.metadata.worker_id, 'w1');
});
