// Client mechanics (cancellation, deadlines, headers, errors over the wire) against an
// in-process fake of RunControl served by connect-node, so that the server side can
// observe them: over gRPC (HTTP/2) and over Connect (HTTP/1.1), the same tests.
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { EventEmitter, once } from 'node:events';
import * as http from 'node:http';
import * as http2 from 'node:http2';
import * as net from 'node:net';
import { connectNodeAdapter } from '@connectrpc/connect-node';

import {
  RunControlClient,
  RunControlError,
  RunControl,
  ErrorInfoSchema,
  Code,
  ConnectError,
  STORE_ID_HEADER,
} from '../dist/index.js';
import { TRANSPORTS } from '../support/python-server.js';

const TOKEN = 'fake-token-0123456789';

/** A NOT_FOUND with two ErrorInfos: another domain's first, then runcontrol's. */
const notFound = () =>
  new ConnectError('not found', Code.NotFound, undefined, [
    { desc: ErrorInfoSchema, value: { reason: 'OTHER', domain: 'example.com', metadata: { x: 'y' } } },
    { desc: ErrorInfoSchema, value: { reason: 'RUN_NOT_FOUND', domain: 'runcontrol', metadata: { run_id: 'r1' } } },
  ]);

/** @param {number} revision */
const progress = (revision) => ({ revision: BigInt(revision), progressOnly: true });

/** The next turn of the event loop (not a timer). */
const tick = () => new Promise((resolve) => setImmediate(resolve));

/**
 * Server-side observations: 'call' (method, request headers) for every call, and
 * 'started' (method, request, cancelled) for WaitRun and WatchRuns, where `cancelled`
 * resolves when the client cancels the call.
 */
const seen = new EventEmitter();

/** @param {import('@connectrpc/connect').HandlerContext} ctx */
function cancelledPromise(ctx) {
  return new Promise((resolve) => {
    if (ctx.signal.aborted) resolve(undefined);
    else ctx.signal.addEventListener('abort', () => resolve(undefined), { once: true });
  });
}

/** @type {Partial<import('@connectrpc/connect').ServiceImpl<typeof RunControl>>} */
const fake = {
  async getRun(request, ctx) {
    seen.emit('call', 'getRun', ctx.requestHeader);
    if (request.runId === 'missing') throw notFound();
    if (request.runId === 'bare') throw new ConnectError('not implemented', Code.Unimplemented);
    // Statuses without details that a dropped connection also produces: kept as sent.
    if (request.runId === 'internal') throw new ConnectError('boom', Code.Internal);
    if (request.runId === 'aborted') throw new ConnectError('try again', Code.Aborted);
    if (request.runId === 'cancelled') throw new ConnectError('cancelled by the server', Code.Canceled);
    return { run: { runId: request.runId, createRevision: 9007199254740993n, modRevision: 2n ** 63n - 1n } };
  },
  /** WaitRun never answers: for abort and deadline tests. */
  async waitRun(request, ctx) {
    const cancelled = cancelledPromise(ctx);
    seen.emit('started', 'waitRun', request, cancelled);
    await cancelled;
    throw new ConnectError('cancelled', Code.Canceled);
  },
  async *watchRuns(request, ctx) {
    seen.emit('call', 'watchRuns', ctx.requestHeader);
    seen.emit('started', 'watchRuns', request, cancelledPromise(ctx));
    const mode = request.threadId;
    if (mode === 'fail') {
      yield progress(1);
      yield progress(2);
      throw notFound();
    } else if (mode === 'flaky') {
      // A server that keeps its store: the first stream is cut, a resume goes on.
      ctx.responseHeader.set(STORE_ID_HEADER, 'store-a');
      if (request.startRevision === 0n) {
        yield progress(1);
        yield progress(2);
        throw new ConnectError('connection lost', Code.Unavailable);
      }
      yield progress(Number(request.startRevision));
      await cancelledPromise(ctx);
    } else if (mode === 'finite') {
      for (let i = 1; i <= 50; i += 1) yield progress(i);
    } else {
      // 'endless': messages until the client cancels.
      for (let i = 1; !ctx.signal.aborted; i += 1) {
        yield progress(i);
        await tick();
      }
    }
  },
};

/**
 * The next call of `method` the fake starts: its request and a promise of its cancellation.
 * @param {string} method
 * @returns {Promise<{ request: any, cancelled: Promise<unknown> }>}
 */
function nextStarted(method) {
  return new Promise((resolve) => {
    /** @param {string} name @param {any} request @param {Promise<unknown>} cancelled */
    const listener = (name, request, cancelled) => {
      if (name !== method) return;
      seen.off('started', listener);
      resolve({ request, cancelled });
    };
    seen.on('started', listener);
  });
}

/**
 * @param {net.Server} server
 * @returns {Promise<string>} "127.0.0.1:PORT"
 */
async function listen(server) {
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  const { port } = /** @type {net.AddressInfo} */ (server.address());
  return `127.0.0.1:${port}`;
}

/** A port with nothing listening on it. */
async function closedPort() {
  const probe = net.createServer();
  probe.listen(0, '127.0.0.1');
  await once(probe, 'listening');
  const { port } = /** @type {net.AddressInfo} */ (probe.address());
  probe.close();
  await once(probe, 'close');
  return `127.0.0.1:${port}`;
}

const handler = connectNodeAdapter({ routes: (router) => router.service(RunControl, fake) });
/** gRPC needs HTTP/2 (h2c here); the Connect transport speaks HTTP/1.1. */
const servers = { grpc: http2.createServer(handler), connect: http.createServer(handler) };
/** @type {Record<string, string>} */
const addresses = {};

before(async () => {
  addresses.grpc = await listen(servers.grpc);
  addresses.connect = await listen(servers.connect);
});

after(async () => {
  servers.connect.closeAllConnections();
  await Promise.all(Object.values(servers).map((server) => new Promise((resolve) => server.close(resolve))));
});

for (const transport of TRANSPORTS) {
  describe(transport, () => {
    /** @type {RunControlClient} */
    let client;

    before(() => {
      client = new RunControlClient(addresses[transport], { transport, deadlineMs: 5_000, token: TOKEN });
    });

    after(() => client?.close());

    it('int64 responses are bigint, exact beyond 2^53', async () => {
      const { run } = await client.getRun({ runId: 'r1' });
      assert.equal(run?.createRevision, 9007199254740993n);
      assert.equal(run?.modRevision, 2n ** 63n - 1n);
    });

    if (transport === 'connect') {
      it('JSON bodies (useBinaryFormat: false) keep int64 exact too', async () => {
        const json = new RunControlClient(addresses[transport], { transport, useBinaryFormat: false });
        try {
          const { run } = await json.getRun({ runId: 'r1' });
          assert.equal(run?.createRevision, 9007199254740993n);
          await assert.rejects(json.getRun({ runId: 'missing' }), { reason: 'RUN_NOT_FOUND' });
        } finally {
          json.close();
        }
      });
    }

    it('every call sends the token and the payload header, unless the caller sets it', async () => {
      /** @type {Promise<[string, Headers]>} */
      let call = /** @type {any} */ (once(seen, 'call'));
      await client.getRun({ runId: 'r1' });
      let [, headers] = await call;
      assert.equal(headers.get('authorization'), `Bearer ${TOKEN}`);
      assert.equal(headers.get('runcontrol-payload-format'), 'json');

      call = /** @type {any} */ (once(seen, 'call'));
      await client.getRun({ runId: 'r1' }, { headers: { 'runcontrol-payload-format': 'struct', 'x-extra': '1' } });
      [, headers] = await call;
      assert.equal(headers.get('runcontrol-payload-format'), 'struct');
      assert.equal(headers.get('x-extra'), '1');

      call = /** @type {any} */ (once(seen, 'call'));
      for await (const _ of client.watchRuns({ threadId: 'finite' })) break;
      [, headers] = await call;
      assert.equal(headers.get('authorization'), `Bearer ${TOKEN}`);
      assert.equal(headers.get('runcontrol-payload-format'), 'json');
    });

    it('unary errors carry ErrorInfo; errors without details have reason ""', async () => {
      await assert.rejects(client.getRun({ runId: 'missing' }), (err) => {
        assert.ok(err instanceof RunControlError);
        assert.equal(err.codeName, 'NOT_FOUND');
        assert.equal(err.reason, 'RUN_NOT_FOUND'); // the runcontrol one, not example.com's
        assert.deepEqual(err.metadata, { run_id: 'r1' });
        assert.deepEqual(
          err.errorInfos.map((i) => i.domain),
          ['example.com', 'runcontrol'],
        );
        assert.equal(err.status?.details.length, 2);
        assert.ok(err.cause instanceof ConnectError);
        return true;
      });
      await assert.rejects(client.getRun({ runId: 'bare' }), (err) => {
        assert.ok(err instanceof RunControlError);
        assert.equal(err.code, 12);
        assert.equal(err.reason, '');
        assert.deepEqual(err.metadata, {});
        assert.equal(err.status, null);
        return true;
      });
      for (const [runId, codeName] of [
        ['internal', 'INTERNAL'],
        ['aborted', 'ABORTED'],
        ['cancelled', 'CANCELLED'],
      ]) {
        await assert.rejects(client.getRun({ runId }), { name: 'RunControlError', codeName, reason: '' });
      }
    });

    it('breaking out of a watch cancels the call', async () => {
      const started = nextStarted('watchRuns');
      const revisions = [];
      for await (const message of client.watchRuns({ threadId: 'endless', startRevision: 7n })) {
        revisions.push(message.revision);
        if (revisions.length === 3) break;
      }
      assert.deepEqual(revisions, [1n, 2n, 3n]);
      const { request, cancelled } = await started;
      assert.equal(request.startRevision, 7n);
      await cancelled; // the server sees the cancellation
    });

    it('return() on a suspended watch cancels the call', async () => {
      const started = nextStarted('watchRuns');
      const watch = client.watchRuns({ threadId: 'endless' });
      assert.equal((await watch.next()).value?.revision, 1n);
      assert.deepEqual(await watch.return(undefined), { done: true, value: undefined });
      await (await started).cancelled;
    });

    it('aborting a watch cancels the call and throws the reason', async () => {
      const started = nextStarted('watchRuns');
      const controller = new AbortController();
      let received = 0;
      await assert.rejects(
        (async () => {
          for await (const _ of client.watchRuns({ threadId: 'endless' }, { signal: controller.signal })) {
            received += 1;
            if (received === 2) controller.abort();
          }
        })(),
        { name: 'AbortError' },
      );
      assert.equal(received, 2);
      await (await started).cancelled;

      const reason = new Error('gone');
      await assert.rejects(client.watchRuns({}, { signal: AbortSignal.abort(reason) }).next(), (err) => err === reason);
    });

    it('a watch error arrives after the messages sent before it', async () => {
      /** @type {bigint[]} */
      const revisions = [];
      await assert.rejects(
        (async () => {
          for await (const message of client.watchRuns({ threadId: 'fail' })) revisions.push(message.revision);
        })(),
        (err) => {
          assert.ok(err instanceof RunControlError);
          assert.equal(err.reason, 'RUN_NOT_FOUND');
          return true;
        },
      );
      assert.deepEqual(revisions, [1n, 2n]);
    });

    it('a finished watch ends the loop, also for a slow consumer', async () => {
      const revisions = [];
      for await (const message of client.watchRuns({ threadId: 'finite' })) {
        revisions.push(Number(message.revision));
        if (revisions.length % 10 === 0) await tick();
      }
      assert.deepEqual(
        revisions,
        Array.from({ length: 50 }, (_, i) => i + 1),
      );
    });

    it('aborting a unary call cancels it and rejects with the reason', async () => {
      const started = nextStarted('waitRun');
      const controller = new AbortController();
      const waiting = client.waitRun({ runId: 'r1' }, { signal: controller.signal });
      const { cancelled } = await started; // the server has the call
      controller.abort();
      await assert.rejects(waiting, { name: 'AbortError' });
      await cancelled;
      await assert.rejects(client.getRun({ runId: 'r1' }, { signal: AbortSignal.abort() }), { name: 'AbortError' });
    });

    it('deadlines: client default and per call', async () => {
      const short = new RunControlClient(addresses[transport], { transport, deadlineMs: 150 });
      try {
        await assert.rejects(short.waitRun({ runId: 'r1' }), { name: 'RunControlError', codeName: 'DEADLINE_EXCEEDED' });
        // Infinity: no deadline for this call (aborted here once the server has it).
        const started = nextStarted('waitRun');
        const controller = new AbortController();
        const unbounded = short.waitRun({ runId: 'r1' }, { deadlineMs: Infinity, signal: controller.signal });
        await started;
        controller.abort();
        await assert.rejects(unbounded, { name: 'AbortError' });
      } finally {
        short.close();
      }
      await assert.rejects(client.waitRun({ runId: 'r1' }, { deadlineMs: 150 }), { codeName: 'DEADLINE_EXCEEDED' });
      assert.throws(() => new RunControlClient(addresses[transport], { transport, deadlineMs: -1 }), TypeError);
    });

    it('resumingWatch: after UNAVAILABLE from the same store, resumes after the last revision', async () => {
      /** @type {bigint[]} */
      const starts = [];
      /** @param {string} name @param {any} request */
      const record = (name, request) => {
        if (name === 'watchRuns') starts.push(request.startRevision);
      };
      seen.on('started', record);
      /** @type {number[]} */
      const delays = [];
      try {
        const revisions = [];
        const watch = client.resumingWatch(
          { threadId: 'flaky' },
          {
            onResync: () => assert.fail('the same store: nothing to re-list'),
            sleep: async (ms) => void delays.push(ms),
            initialBackoffMs: 7,
          },
        );
        for await (const message of watch) {
          revisions.push(message.revision);
          if (revisions.length === 3) break;
        }
        assert.deepEqual(revisions, [1n, 2n, 3n]);
        assert.deepEqual(starts, [0n, 3n]);
        assert.deepEqual(delays, [7]);
      } finally {
        seen.off('started', record);
      }
    });

    it('close() cancels the calls in progress: CANCELLED, not UNAVAILABLE', async () => {
      const closing = new RunControlClient(addresses[transport], { transport, token: TOKEN });
      const waitStarted = nextStarted('waitRun');
      const watchStarted = nextStarted('watchRuns');
      const waiting = closing.waitRun({ runId: 'r1' });
      const watch = closing.watchRuns({ threadId: 'endless' });
      assert.equal((await watch.next()).value?.revision, 1n);
      const [wait, watching] = await Promise.all([waitStarted, watchStarted]);
      closing.close();
      await assert.rejects(waiting, { name: 'RunControlError', codeName: 'CANCELLED', code: Code.Canceled });
      await assert.rejects(
        (async () => {
          for await (const _ of watch);
        })(),
        { name: 'RunControlError', codeName: 'CANCELLED' },
      );
      await Promise.all([wait.cancelled, watching.cancelled]); // the server saw both go
      // The caller's abort stays an abort (its reason), not UNAVAILABLE either.
      const started = nextStarted('waitRun');
      const controller = new AbortController();
      const aborted = client.waitRun({ runId: 'r1' }, { signal: controller.signal });
      await started;
      const reason = new Error('mine');
      controller.abort(reason);
      await assert.rejects(aborted, (err) => err === reason);
    });

    it('nothing listening: UNAVAILABLE, and waitForReady rejects', async () => {
      const nowhere = new RunControlClient(await closedPort(), { transport });
      try {
        await assert.rejects(nowhere.getRun({ runId: 'r1' }), { name: 'RunControlError', codeName: 'UNAVAILABLE' });
        await assert.rejects(nowhere.waitForReady(5_000), { name: 'RunControlError', codeName: 'UNAVAILABLE' });
      } finally {
        nowhere.close();
      }
      await client.waitForReady(5_000);
    });
  });
}

describe('waitForReady', () => {
  it('destroys its probe socket when the deadline wins', async () => {
    // Accepts TCP connections and never answers the TLS handshake.
    const silent = net.createServer();
    /** @type {Promise<void>} */
    const probeClosed = new Promise((resolve) => {
      silent.once('connection', (socket) => {
        socket.resume(); // read (and drop) the ClientHello, so that the end is seen
        socket.once('close', () => resolve());
      });
    });
    const address = await listen(silent);
    const client = new RunControlClient(`https://${address}`, { transport: 'connect', token: null });
    try {
      await assert.rejects(client.waitForReady(100), { name: 'RunControlError', codeName: 'DEADLINE_EXCEEDED' });
      await probeClosed; // the client let go of it (a leak would hang here)
    } finally {
      client.close();
      silent.close();
    }
  });
});

describe('construction', () => {
  it('addresses: host:port or an http(s) URL that agrees with the TLS options', () => {
    const plain = new RunControlClient('127.0.0.1:1', { tls: null, token: null });
    assert.equal(plain.baseUrl, 'http://127.0.0.1:1');
    assert.equal(plain.transport, 'grpc');
    const secure = new RunControlClient('https://localhost:8443', { transport: 'connect', tls: null, token: null });
    assert.equal(secure.baseUrl, 'https://localhost:8443');
    assert.throws(() => new RunControlClient('http://localhost:1', { tls: { ca: 'x' }, token: null }), /TLS/);
    assert.throws(() => new RunControlClient('localhost', { tls: null, token: null }), /host:port/);
    assert.throws(() => new RunControlClient('localhost:1', { transport: /** @type {any} */ ('grpc-web') }), /transport/);
    for (const client of [plain, secure]) client.close();
  });
});
