// TLS, mutual TLS and bearer tokens against the real Python server, over gRPC and
// over Connect (the HTTP listener serves TLS with the same certificate). Certificates
// are made at test time by tests/_certs.py (the `cryptography` package), for
// 127.0.0.1 / localhost.
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { randomUUID } from 'node:crypto';

import { RunControlClient, RunControlError, RunStatus } from '../dist/index.js';
import { startServer, PYTHON, REPO_ROOT, TRANSPORTS } from '../support/python-server.js';

const TOKENS = {
  reader: 'node-reader-token-0123456789',
  worker: 'node-worker-token-0123456789',
  admin: 'node-admin-token-0123456789',
};
const ENV_NAMES = ['RUNCONTROL_TOKEN', 'RUNCONTROL_TLS_CA', 'RUNCONTROL_TLS_CLIENT_CERT', 'RUNCONTROL_TLS_CLIENT_KEY'];

/** @type {string} */
let dir;
/** @type {{ ca: string, server_cert: string, server_key: string, clients: Record<string, [string, string]> }} */
let certs;
/** @type {import('../support/python-server.js').Server} TLS + tokens */
let server;
/** @type {import('../support/python-server.js').Server} mutual TLS + tokens with a certificate entry */
let mtlsServer;
/** @type {RunControlClient[]} */
const clients = [];

before(async () => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'runcontrol-node-tls-'));
  const made = spawnSync(PYTHON, [path.join(REPO_ROOT, 'tests', '_certs.py'), dir], { encoding: 'utf8' });
  assert.equal(made.status, 0, made.stderr);
  certs = JSON.parse(made.stdout);
  const tokensFile = path.join(dir, 'tokens');
  fs.writeFileSync(
    tokensFile,
    `${Object.entries(TOKENS)
      .map(([role, token]) => `${role} ${token} node-${role}`)
      .join('\n')}\nworker cert:worker-1 worker-1-cert\n`,
  );
  const tls = ['--tls-cert', certs.server_cert, '--tls-key', certs.server_key, '--tokens-file', tokensFile];
  [server, mtlsServer] = await Promise.all([
    startServer({ args: tls }),
    startServer({ args: [...tls, '--tls-client-ca', certs.ca] }),
  ]);
});

after(async () => {
  for (const client of clients) client.close();
  for (const running of [server, mtlsServer]) {
    if (!running) continue;
    const { code, signal } = await running.stop(15_000);
    assert.equal(signal, null, `server killed by ${signal}\n${running.stderr()}`);
    assert.equal(code, 0, `server exit code ${code}\n${running.stderr()}`);
    for (const token of Object.values(TOKENS)) assert.ok(!running.stderr().includes(token), 'a token was logged');
  }
  if (dir) fs.rmSync(dir, { recursive: true, force: true });
});

/**
 * @param {import('../support/python-server.js').Server} target
 * @param {'grpc' | 'connect'} transport
 * @param {import('../dist/index.js').ClientOptions} options
 */
function connect(target, transport, options) {
  const client = new RunControlClient(target.addressFor(transport), { transport, deadlineMs: 10_000, ...options });
  clients.push(client);
  return client;
}

/** @param {Promise<unknown>} promise @returns {Promise<RunControlError>} */
async function rejection(promise) {
  try {
    await promise;
  } catch (err) {
    assert.ok(err instanceof RunControlError, `expected RunControlError, got ${err}`);
    return err;
  }
  assert.fail('expected the call to fail');
}

const ca = () => fs.readFileSync(certs.ca);

for (const transport of TRANSPORTS) {
  describe(transport, () => {
    it('tokens by option over TLS: roles, ErrorInfo, watch streams', async () => {
      const admin = connect(server, transport, { token: TOKENS.admin, tls: { ca: ca() } });
      const reader = connect(server, transport, { token: TOKENS.reader, tls: { ca: ca() } });
      const anonymous = connect(server, transport, { token: null, tls: { ca: ca() } });
      const threadId = `thread-${randomUUID()}`;
      const { run } = await admin.createRun({ threadId });
      assert.ok(run);

      const denied = await rejection(reader.cancelRun({ runId: run.runId }));
      assert.equal(denied.codeName, 'PERMISSION_DENIED');
      assert.equal(denied.reason, 'PERMISSION_DENIED');
      assert.deepEqual(denied.metadata, { method: 'CancelRun', required_role: 'admin', role: 'reader' });

      const missing = await rejection(anonymous.getRun({ runId: run.runId }));
      assert.equal(missing.codeName, 'UNAUTHENTICATED');
      assert.deepEqual(missing.metadata, { method: 'GetRun', required_role: 'reader' });

      // The watch stream carries the token too: the reader gets the initial set.
      let received = 0;
      for await (const message of reader.watchRuns({ threadId, sendInitial: true })) {
        received += 1;
        assert.deepEqual(
          message.events.map((e) => e.run?.runId),
          [run.runId],
        );
        break;
      }
      assert.equal(received, 1, 'the reader received the initial set');
      const watchDenied = await rejection(
        (async () => {
          for await (const _ of anonymous.watchRuns({ threadId })) break;
        })(),
      );
      assert.equal(watchDenied.reason, 'UNAUTHENTICATED');
    });

    it('a plaintext client cannot reach a TLS server', async () => {
      const plain = connect(server, transport, { token: TOKENS.admin, tls: null, deadlineMs: 5_000 });
      const err = await rejection(plain.hasInflight({ threadId: 't' }));
      assert.equal(err.codeName, 'UNAVAILABLE');
    });

    it('token and TLS from the environment', async () => {
      const saved = Object.fromEntries(ENV_NAMES.map((name) => [name, process.env[name]]));
      try {
        process.env.RUNCONTROL_TOKEN = TOKENS.worker;
        process.env.RUNCONTROL_TLS_CA = certs.ca;
        const worker = connect(server, transport, {});
        const err = await rejection(worker.setRunStatus({ runId: 'no-such-run', status: RunStatus.RUNNING }));
        assert.equal(err.reason, 'RUN_NOT_FOUND'); // authorized: the server looked for the run
        process.env.RUNCONTROL_TLS_CA = path.join(dir, 'missing.pem');
        assert.throws(() => new RunControlClient(server.addressFor(transport), { transport }), /RUNCONTROL_TLS_CA/);
      } finally {
        for (const [name, value] of Object.entries(saved)) {
          if (value === undefined) delete process.env[name];
          else process.env[name] = value;
        }
      }
    });

    it('mutual TLS: a client certificate is required; over gRPC it maps to its role', async () => {
      const [cert, key] = certs.clients['worker-1'];
      const tls = { ca: ca(), cert: fs.readFileSync(cert), key: fs.readFileSync(key) };
      const worker = connect(mtlsServer, transport, { token: null, tls });
      if (transport === 'grpc') {
        const notFound = await rejection(worker.setRunStatus({ runId: 'no-such-run', status: RunStatus.RUNNING }));
        assert.equal(notFound.reason, 'RUN_NOT_FOUND');
        const denied = await rejection(worker.createRun({ threadId: 't' }));
        assert.deepEqual(denied.metadata, { method: 'CreateRun', required_role: 'admin', role: 'worker' });
      } else {
        // Over HTTP a caller is identified by its bearer token only (`cert:` identities
        // are the gRPC port's): the certificate opens the connection, the token names the role.
        const anonymous = await rejection(worker.setRunStatus({ runId: 'no-such-run', status: RunStatus.RUNNING }));
        assert.equal(anonymous.reason, 'UNAUTHENTICATED');
        const withToken = connect(mtlsServer, transport, { token: TOKENS.worker, tls });
        const notFound = await rejection(withToken.setRunStatus({ runId: 'no-such-run', status: RunStatus.RUNNING }));
        assert.equal(notFound.reason, 'RUN_NOT_FOUND');
      }

      const noCertificate = connect(mtlsServer, transport, { token: TOKENS.admin, tls: { ca: ca() }, deadlineMs: 5_000 });
      assert.equal((await rejection(noCertificate.hasInflight({ threadId: 't' }))).codeName, 'UNAVAILABLE');
      assert.throws(
        () => new RunControlClient(mtlsServer.addressFor(transport), { transport, tls: { ca: ca(), cert: tls.cert } }),
        /go together/,
      );
    });
  });
}
