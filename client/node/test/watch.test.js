// WatchRuns (server streaming) against the real Python server, over gRPC and over
// Connect (HTTP/1.1). Needs a server that implements WatchRuns (UNIMPLEMENTED fails
// these tests on purpose).
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';

import { RunControlClient, RunControlError, RunStatus, EventType, STORE_ID_HEADER } from '../dist/index.js';
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

    it('a watch stream carries the store id of the server', async () => {
      const threadId = `thread-${randomUUID()}`;
      /** @type {Headers | null} */
      let header = null;
      const stream = client.watchRuns({ threadId, sendInitial: true }, { onHeader: (h) => (header = h) });
      assert.equal(stream.storeId, null); // the call starts on the first next()
      let messages = 0;
      for await (const message of stream) {
        messages += 1;
        assert.ok(message.endOfInitialSet); // the thread has no runs: the set is empty
        break;
      }
      assert.equal(messages, 1);
      assert.equal(typeof stream.storeId, 'string');
      assert.ok(stream.storeId);
      assert.equal(/** @type {Headers | null} */ (header)?.get(STORE_ID_HEADER), stream.storeId);
      // The same store answers every stream of this server.
      const again = client.watchRuns({ threadId, sendInitial: true });
      await again.next();
      assert.equal(again.storeId, stream.storeId);
      await again.return();
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

/**
 * Stop a server and check that it exited cleanly.
 * @param {import('../support/python-server.js').Server} running
 */
async function stopCleanly(running) {
  const { code, signal } = await running.stop(15_000);
  assert.equal(signal, null, `server killed by ${signal}\n${running.stderr()}`);
  assert.equal(code, 0, `server exit code ${code}\n${running.stderr()}`);
}

/**
 * The store id of a server, from a watch stream's response headers.
 * @param {RunControlClient} client
 */
async function storeIdOf(client) {
  const stream = client.watchRuns({ threadId: `thread-${randomUUID()}`, sendInitial: true });
  await stream.next();
  await stream.return();
  return stream.storeId;
}

/** A backoff that never fails the test: count it and go on at once. */
function countingSleep() {
  const sleep = async () => {
    sleep.calls += 1;
  };
  sleep.calls = 0;
  return sleep;
}

for (const transport of TRANSPORTS) {
  describe(`${transport}: resumingWatch`, () => {
    it('REVISION_COMPACTED: re-lists and hands the whole set to onResync', async () => {
      const small = await startServer({ args: ['--history-size', '2'] });
      const client = new RunControlClient(small.addressFor(transport), { transport, deadlineMs: 10_000 });
      try {
        const threadId = `thread-${randomUUID()}`;
        const { revision } = await client.hasInflight({ threadId });
        const run = (await client.createRun({ threadId })).run;
        assert.ok(run);
        // More changes than the history keeps: revision + 1 falls out of it.
        for (let i = 0; i < 4; i += 1) await client.createRun({ threadId: `other-${randomUUID()}` });
        await assert.rejects(client.watchRuns({ threadId, startRevision: revision + 1n }).next(), {
          name: 'RunControlError',
          reason: 'REVISION_COMPACTED',
        });

        /** @type {import('../dist/index.js').Resync[]} */
        const resyncs = [];
        const sleep = countingSleep();
        const watch = client.resumingWatch(
          { threadId, startRevision: revision + 1n },
          {
            onResync: async (resync) => {
              resyncs.push(resync);
              // A change after the snapshot: the watch goes on with it.
              await client.setRunStatus({ runId: run.runId, status: RunStatus.RUNNING, workerId: 'w1' });
            },
            sleep,
          },
        );
        /** @type {import('../dist/index.js').RunEvent[]} */
        const events = [];
        for await (const message of watch) {
          events.push(...message.events);
          if (events.length > 0) break;
        }
        assert.equal(sleep.calls, 0, 'no backoff: the server answered');
        assert.equal(resyncs.length, 1);
        const [resync] = resyncs;
        assert.equal(resync.reason, 'REVISION_COMPACTED');
        assert.equal(resync.storeId, await storeIdOf(client));
        assert.deepEqual(
          resync.runs.map((r) => [r.runId, r.status]),
          [[run.runId, RunStatus.PENDING]],
        );
        assert.deepEqual(
          events.map((e) => [e.type, e.run?.runId, e.run?.status]),
          [[EventType.MODIFIED, run.runId, RunStatus.RUNNING]],
        );
        assert.ok(events[0].revision > resync.revision);
      } finally {
        client.close();
        await stopCleanly(small);
      }
    });

    it('an in-memory server restarted: another store id, so a re-list, not a resume', async () => {
      const first = await startServer();
      /** @type {import('../support/python-server.js').Server | null} */
      let second = null;
      /** @type {RunControlClient | null} */
      let writer = null;
      const client = new RunControlClient(first.addressFor(transport), { transport, deadlineMs: 10_000 });
      try {
        const firstStore = await storeIdOf(client);
        const threadId = `thread-${randomUUID()}`;
        const old = (await client.createRun({ threadId })).run;
        assert.ok(old);
        /** @type {import('../dist/index.js').RunRecord | undefined} */
        let fresh;

        /** @type {import('../dist/index.js').Resync[]} */
        const resyncs = [];
        const sleep = countingSleep();
        const watch = client.resumingWatch(
          { threadId, sendInitial: true },
          {
            onResync: async (resync) => {
              resyncs.push(resync);
              assert.ok(writer && fresh);
              await writer.setRunStatus({ runId: fresh.runId, status: RunStatus.SUCCESS, workerId: 'w1' });
            },
            sleep,
          },
        );
        /** @type {(string | undefined)[]} */
        const initial = [];
        /** @type {import('../dist/index.js').WatchRunsResponse[]} */
        const afterRestart = [];
        for await (const message of watch) {
          if (second === null) {
            // The initial set, from the first server: the old run.
            initial.push(...message.events.map((e) => e.run?.runId));
            if (!message.endOfInitialSet) continue;
            assert.deepEqual(initial, [old.runId]);
            // Stopped gracefully (the watch gets SHUTTING_DOWN), and a new server on
            // the same ports: a new, empty store.
            await stopCleanly(first);
            second = await startServer({ args: ['--listen', first.address, '--http-listen', first.httpAddress] });
            writer = new RunControlClient(second.addressFor(transport), { transport, deadlineMs: 10_000 });
            // Changes whose revisions pass the ones seen: resuming would deliver them
            // as if they followed the old store's.
            fresh = (await writer.createRun({ threadId })).run;
            assert.ok(fresh);
            await writer.setRunStatus({ runId: fresh.runId, status: RunStatus.RUNNING, workerId: 'w1' });
            continue;
          }
          afterRestart.push(message);
          if (message.events.length > 0) break;
        }
        assert.ok(fresh);
        assert.ok(sleep.calls >= 1, 'the watch was interrupted and reconnected');
        assert.equal(resyncs.length, 1);
        const [resync] = resyncs;
        assert.equal(resync.reason, 'STORE_CHANGED');
        assert.equal(typeof resync.storeId, 'string');
        assert.notEqual(resync.storeId, firstStore);
        assert.equal(resync.storeId, await storeIdOf(/** @type {RunControlClient} */ (writer)));
        // The new store's runs only, as they are at the snapshot.
        assert.deepEqual(
          resync.runs.map((r) => [r.runId, r.status]),
          [[fresh.runId, RunStatus.RUNNING]],
        );
        // Nothing of the new store was delivered as a continuation of the old one.
        const events = afterRestart.flatMap((m) => m.events);
        assert.deepEqual(
          events.map((e) => [e.type, e.run?.runId, e.prevStatus, e.run?.status]),
          [[EventType.MODIFIED, fresh.runId, RunStatus.RUNNING, RunStatus.SUCCESS]],
        );
        assert.ok(events[0].revision > resync.revision);
      } finally {
        client.close();
        writer?.close();
        if (first) await first.stop(15_000);
        if (second) await stopCleanly(second);
      }
    });
  });
}
