'use strict';
// Client mechanics (cancellation, deadlines, errors over the wire) against an
// in-process grpc-js fake of RunControl, so the server side can observe them.
const { test, before, after } = require('node:test');
const assert = require('node:assert/strict');
const protoLoader = require('@grpc/proto-loader');

const { RunControlClient, RunControlError, LOADER_OPTIONS, grpc } = require('../src/index.js');

// Status(code=5, details=[ErrorInfo(reason RUN_NOT_FOUND, domain runcontrol, {run_id: "r1"})]),
// serialized by the Python protobuf runtime.
const NOT_FOUND_STATUS = Buffer.from(
  '080512096e6f7420666f756e641a550a28747970652e676f6f676c65617069732e636f6d2f676f6f676c652e7270632e4572726f72496e' +
    '666f12290a0d52554e5f4e4f545f464f554e44120a72756e636f6e74726f6c1a0c0a0672756e5f696412027231',
  'hex',
);

/** @param {number} code @param {string} details @param {Buffer} [statusBytes] */
function grpcError(code, details, statusBytes) {
  const metadata = new grpc.Metadata();
  if (statusBytes) metadata.set('grpc-status-details-bin', statusBytes);
  return { code, details, metadata };
}

/**
 * Resolves when the client cancels `call` (not `events.once`: that would reject
 * when the handler itself emits 'error' to end the stream).
 * @param {import('node:events').EventEmitter} call
 * @returns {Promise<void>}
 */
const cancelled = (call) => new Promise((resolve) => call.once('cancelled', () => resolve()));

/** @param {number} revision */
const progress = (revision) => ({ revision: String(revision), events: [], progress_only: true });

/** Server-side observations, reset per test. */
const seen = {
  /** @type {Promise<void> | null} */ watchCancelled: null,
  /** @type {Promise<void> | null} */ waitCancelled: null,
  /** @type {any} */ lastWatchRequest: null,
};

/** @type {grpc.Server} */
let server;
/** @type {RunControlClient} */
let client;
let address = '';

before(async () => {
  const definition = protoLoader.loadSync('runcontrol/v1/run_control.proto', LOADER_OPTIONS);
  const pkg = /** @type {any} */ (grpc.loadPackageDefinition(definition));
  server = new grpc.Server();
  server.addService(pkg.runcontrol.v1.RunControl.service, {
    /** @param {grpc.ServerUnaryCall<any, any>} call @param {grpc.sendUnaryData<any>} callback */
    GetRun(call, callback) {
      const id = call.request.run_id;
      if (id === 'missing') callback(grpcError(grpc.status.NOT_FOUND, 'not found', NOT_FOUND_STATUS));
      else if (id === 'bare') callback(grpcError(grpc.status.UNIMPLEMENTED, 'not implemented'));
      else callback(null, { run: { run_id: id, create_revision: '9007199254740993' } });
    },
    /** WaitRun never answers: for abort and deadline tests. @param {grpc.ServerUnaryCall<any, any>} call */
    WaitRun(call) {
      seen.waitCancelled = cancelled(call);
    },
    /** @param {grpc.ServerWritableStream<any, any>} call */
    WatchRuns(call) {
      seen.lastWatchRequest = call.request;
      seen.watchCancelled = cancelled(call);
      const mode = call.request.thread_id;
      if (mode === 'fail') {
        call.write(progress(1));
        call.write(progress(2));
        call.emit('error', grpcError(grpc.status.NOT_FOUND, 'not found', NOT_FOUND_STATUS));
      } else if (mode === 'finite') {
        for (let i = 1; i <= 50; i += 1) call.write(progress(i));
        call.end();
      } else {
        // 'endless': a message every 20 ms until the client cancels.
        let revision = 0;
        const timer = setInterval(() => call.write(progress((revision += 1))), 20);
        call.on('cancelled', () => clearInterval(timer));
      }
    },
  });
  const port = await new Promise((resolve, reject) => {
    server.bindAsync('127.0.0.1:0', grpc.ServerCredentials.createInsecure(), (err, p) => (err ? reject(err) : resolve(p)));
  });
  address = `127.0.0.1:${port}`;
  client = new RunControlClient(address, { deadlineMs: 5_000 });
});

after(async () => {
  client?.close();
  await new Promise((resolve) => server.tryShutdown(() => resolve(undefined)));
});

/** Resolve `promise` or fail after `ms`. @param {Promise<unknown> | null} promise @param {number} ms */
async function within(promise, ms, what = 'event') {
  assert.ok(promise, `${what}: not started`);
  let timer;
  try {
    await Promise.race([
      promise,
      new Promise((_, reject) => {
        timer = setTimeout(() => reject(new Error(`${what} not seen within ${ms} ms`)), ms);
      }),
    ]);
  } finally {
    clearTimeout(timer);
  }
}

test('int64 responses are strings beyond 2^53', { timeout: 10_000 }, async () => {
  const { run } = await client.getRun({ run_id: 'r1' });
  assert.equal(run.create_revision, '9007199254740993');
});

test('unary errors decode ErrorInfo; errors without details have reason ""', { timeout: 10_000 }, async () => {
  await assert.rejects(client.getRun({ run_id: 'missing' }), (err) => {
    assert.ok(err instanceof RunControlError);
    assert.equal(err.codeName, 'NOT_FOUND');
    assert.equal(err.reason, 'RUN_NOT_FOUND');
    assert.deepEqual(err.metadata, { run_id: 'r1' });
    return true;
  });
  await assert.rejects(client.getRun({ run_id: 'bare' }), { name: 'RunControlError', code: 12, reason: '' });
});

test('breaking out of a watch cancels the call', { timeout: 10_000 }, async () => {
  const revisions = [];
  for await (const message of client.watchRuns({ thread_id: 'endless', start_revision: 7n })) {
    revisions.push(message.revision);
    if (revisions.length === 3) break;
  }
  assert.deepEqual(revisions, ['1', '2', '3']);
  assert.equal(seen.lastWatchRequest.start_revision, '7');
  await within(seen.watchCancelled, 5_000, 'server-side cancel');
});

test('return() on a suspended watch cancels the call', { timeout: 10_000 }, async () => {
  const watch = client.watchRuns({ thread_id: 'endless' });
  assert.equal((await watch.next()).value?.revision, '1');
  assert.deepEqual(await watch.return(undefined), { done: true, value: undefined });
  await within(seen.watchCancelled, 5_000, 'server-side cancel');
});

test('aborting a watch cancels the call and throws the reason', { timeout: 10_000 }, async () => {
  const controller = new AbortController();
  let received = 0;
  await assert.rejects(
    (async () => {
      for await (const _ of client.watchRuns({ thread_id: 'endless' }, { signal: controller.signal })) {
        received += 1;
        if (received === 2) controller.abort();
      }
    })(),
    { name: 'AbortError' },
  );
  assert.equal(received, 2);
  await within(seen.watchCancelled, 5_000, 'server-side cancel');

  const aborted = AbortSignal.abort();
  await assert.rejects(client.watchRuns({}, { signal: aborted }).next(), { name: 'AbortError' });
});

test('a watch error arrives after the messages sent before it', { timeout: 10_000 }, async () => {
  /** @type {string[]} */
  const revisions = [];
  await assert.rejects(
    (async () => {
      for await (const message of client.watchRuns({ thread_id: 'fail' })) revisions.push(message.revision);
    })(),
    (err) => {
      assert.ok(err instanceof RunControlError);
      assert.equal(err.reason, 'RUN_NOT_FOUND');
      return true;
    },
  );
  assert.deepEqual(revisions, ['1', '2']);
});

test('a finished watch ends the loop, also for a slow consumer', { timeout: 10_000 }, async () => {
  const revisions = [];
  for await (const message of client.watchRuns({ thread_id: 'finite' })) {
    revisions.push(Number(message.revision));
    if (revisions.length % 10 === 0) await new Promise((r) => setTimeout(r, 10));
  }
  assert.deepEqual(
    revisions,
    Array.from({ length: 50 }, (_, i) => i + 1),
  );
});

test('aborting a unary call cancels it and rejects with the reason', { timeout: 10_000 }, async () => {
  const controller = new AbortController();
  const waiting = client.waitRun({ run_id: 'r1' }, { signal: controller.signal });
  setTimeout(() => controller.abort(), 100);
  await assert.rejects(waiting, { name: 'AbortError' });
  await within(seen.waitCancelled, 5_000, 'server-side cancel');
  await assert.rejects(client.getRun({ run_id: 'r1' }, { signal: AbortSignal.abort() }), { name: 'AbortError' });
});

test('deadlines: client default and per call', { timeout: 10_000 }, async () => {
  const short = new RunControlClient(address, { deadlineMs: 150 });
  try {
    await assert.rejects(short.waitRun({ run_id: 'r1' }), { name: 'RunControlError', codeName: 'DEADLINE_EXCEEDED' });
  } finally {
    short.close();
  }
  await assert.rejects(client.waitRun({ run_id: 'r1' }, { deadlineMs: 150 }), { codeName: 'DEADLINE_EXCEEDED' });
  assert.throws(() => new RunControlClient(address, { deadlineMs: -1 }), TypeError);
});
