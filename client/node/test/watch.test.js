'use strict';
// WatchRuns against the real Python server. Needs a server that implements
// WatchRuns (UNIMPLEMENTED fails these tests on purpose).
const { test, before, after } = require('node:test');
const assert = require('node:assert/strict');
const { randomUUID } = require('node:crypto');

const { RunControlClient } = require('../src/index.js');
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

/**
 * Collect the first `count` events of a watch (progress messages skipped).
 * @param {AsyncIterable<import('../src/index').WatchRunsResponse>} watch
 * @param {number} count
 */
async function collect(watch, count) {
  /** @type {import('../src/index').RunEvent[]} */
  const events = [];
  /** @type {string[]} */
  const messageRevisions = [];
  for await (const message of watch) {
    if (message.events.length === 0) continue;
    messageRevisions.push(message.revision);
    events.push(...message.events);
    if (events.length >= count) break; // cancels the call
  }
  return { events, messageRevisions };
}

test('a watch on a thread sees ADDED then MODIFIED', { timeout: 20_000 }, async () => {
  const threadId = `thread-${randomUUID()}`;
  // Watch from the revision after "now": no race with the writes below even
  // if the stream is established after them (the server replays history).
  const { revision } = await client.hasInflight({ thread_id: threadId });
  assert.match(revision, /^[0-9]+$/);
  const signal = AbortSignal.timeout(15_000); // bounds the whole watch
  const watching = collect(
    client.watchRuns({ thread_id: threadId, start_revision: (BigInt(revision) + 1n).toString() }, { signal }),
    2,
  );

  const { run } = await client.createRun({ thread_id: threadId });
  const claimed = await client.setRunStatus({ run_id: run.run_id, status: 'RUN_STATUS_RUNNING', worker_id: 'w1' });
  // A run on another thread must not show up.
  await client.createRun({ thread_id: `other-${randomUUID()}` });

  const { events, messageRevisions } = await watching;
  assert.equal(events.length, 2);
  const [added, modified] = events;

  assert.equal(added.type, 'EVENT_TYPE_ADDED');
  assert.equal(added.run.run_id, run.run_id);
  assert.equal(added.run.status, 'RUN_STATUS_PENDING');
  assert.equal(added.prev_status, 'RUN_STATUS_UNSPECIFIED');
  assert.equal(added.revision, run.create_revision);

  assert.equal(modified.type, 'EVENT_TYPE_MODIFIED');
  assert.equal(modified.run.run_id, run.run_id);
  assert.equal(modified.run.status, 'RUN_STATUS_RUNNING');
  assert.equal(modified.run.worker_id, 'w1');
  assert.equal(modified.prev_status, 'RUN_STATUS_PENDING');
  assert.equal(modified.revision, claimed.run.mod_revision);

  assert.ok(BigInt(added.revision) < BigInt(modified.revision), 'events in revision order');
  for (const r of messageRevisions) assert.match(r, /^[0-9]+$/);
});

test('aborting a watch cancels it and throws the abort reason', { timeout: 10_000 }, async () => {
  const controller = new AbortController();
  const watch = client.watchRuns({ thread_id: `thread-${randomUUID()}` }, { signal: controller.signal });
  // Nothing matches: only progress messages (if any) until the abort.
  const consuming = (async () => {
    for await (const message of watch) assert.equal(message.events.length, 0);
  })();
  setTimeout(() => controller.abort(), 300);
  await assert.rejects(consuming, { name: 'AbortError' });
  // The server is still fine afterwards.
  const { has_inflight } = await client.hasInflight({ thread_id: `thread-${randomUUID()}` });
  assert.equal(has_inflight, false);
});
