// WatchRuns (server streaming) against the real Python server, over gRPC and over
// Connect (HTTP/1.1). Needs a server that implements WatchRuns (UNIMPLEMENTED fails
// these tests on purpose).
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';

import { RunControlClient, RunStatus, EventType } from '../dist/index.js';
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

/**
 * Collect the first `count` events of a watch (progress messages skipped).
 * @param {AsyncIterable<import('../dist/index.js').WatchRunsResponse>} watch
 * @param {number} count
 */
async function collect(watch, count) {
  /** @type {import('../dist/index.js').RunEvent[]} */
  const events = [];
  /** @type {bigint[]} */
  const messageRevisions = [];
  for await (const message of watch) {
    if (message.events.length === 0) continue;
    messageRevisions.push(message.revision);
    events.push(...message.events);
    if (events.length >= count) break; // cancels the call
  }
  return { events, messageRevisions };
}

for (const transport of TRANSPORTS) {
  describe(transport, () => {
    /** @type {RunControlClient} */
    let client;

    before(async () => {
      client = new RunControlClient(server.addressFor(transport), { transport, deadlineMs: 10_000 });
      await client.waitForReady(10_000);
    });

    after(() => client?.close());

    it('a watch on a thread sees ADDED then MODIFIED', async () => {
      const threadId = `thread-${randomUUID()}`;
      // Watch from the revision after "now": no race with the writes below even
      // if the stream is established after them (the server replays history).
      const { revision } = await client.hasInflight({ threadId });
      assert.equal(typeof revision, 'bigint');
      const watching = collect(client.watchRuns({ threadId, startRevision: revision + 1n }), 2);

      const run = (await client.createRun({ threadId })).run;
      assert.ok(run);
      const claimed = await client.setRunStatus({ runId: run.runId, status: RunStatus.RUNNING, workerId: 'w1' });
      // A run on another thread must not show up.
      await client.createRun({ threadId: `other-${randomUUID()}` });

      const { events, messageRevisions } = await watching;
      assert.equal(events.length, 2);
      const [added, modified] = events;

      assert.equal(added.type, EventType.ADDED);
      assert.equal(added.run?.runId, run.runId);
      assert.equal(added.run?.status, RunStatus.PENDING);
      assert.equal(added.prevStatus, RunStatus.UNSPECIFIED);
      assert.equal(added.revision, run.createRevision);

      assert.equal(modified.type, EventType.MODIFIED);
      assert.equal(modified.run?.runId, run.runId);
      assert.equal(modified.run?.status, RunStatus.RUNNING);
      assert.equal(modified.run?.workerId, 'w1');
      assert.equal(modified.prevStatus, RunStatus.PENDING);
      assert.equal(modified.revision, claimed.run?.modRevision);

      assert.ok(added.revision < modified.revision, 'events in revision order');
      for (const r of messageRevisions) assert.equal(typeof r, 'bigint');
    });

    it('a watch resumed from the revision after the last event misses nothing', async () => {
      const threadId = `thread-${randomUUID()}`;
      const { revision } = await client.hasInflight({ threadId });
      const run = (await client.createRun({ threadId })).run;
      assert.ok(run);
      // First watch: sees ADDED, then stops (a dropped connection, a restart).
      const first = await collect(client.watchRuns({ threadId, startRevision: revision + 1n }), 1);
      const last = first.events[0].revision;
      assert.equal(first.events[0].type, EventType.ADDED);
      // Changes made while nobody watches...
      await client.setRunStatus({ runId: run.runId, status: RunStatus.RUNNING, workerId: 'w1' });
      await client.setRunStatus({ runId: run.runId, status: RunStatus.SUCCESS, workerId: 'w1' });
      // ...are replayed to a watch resumed from the revision after the last one seen.
      const resumed = await collect(client.watchRuns({ threadId, startRevision: last + 1n }), 2);
      assert.deepEqual(
        resumed.events.map((e) => [e.prevStatus, e.run?.status]),
        [
          [RunStatus.PENDING, RunStatus.RUNNING],
          [RunStatus.RUNNING, RunStatus.SUCCESS],
        ],
      );
      assert.ok(resumed.events[0].revision > last);
    });

    it('aborting a watch cancels it and throws the abort reason', async () => {
      const controller = new AbortController();
      const threadId = `thread-${randomUUID()}`;
      let messages = 0;
      // send_initial: the (empty) initial set ends with a message, so the stream is
      // established when it arrives; nothing else matches until the abort.
      const consuming = (async () => {
        for await (const message of client.watchRuns({ threadId, sendInitial: true }, { signal: controller.signal })) {
          messages += 1;
          assert.equal(message.events.length, 0);
          if (message.endOfInitialSet) controller.abort();
        }
      })();
      await assert.rejects(consuming, { name: 'AbortError' });
      assert.ok(messages >= 1);
      // The server is still fine afterwards.
      const { hasInflight } = await client.hasInflight({ threadId: `thread-${randomUUID()}` });
      assert.equal(hasInflight, false);
    });
  });
}
