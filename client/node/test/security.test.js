'use strict';
// TLS, mutual TLS and bearer tokens against the real Python server. Certificates
// are made at test time by tests/_certs.py (the `cryptography` package), for
// 127.0.0.1 / localhost.
const { test, before, after } = require('node:test');
const assert = require('node:assert/strict');
const { spawnSync } = require('node:child_process');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const { randomUUID } = require('node:crypto');

const { RunControlClient, RunControlError } = require('../src/index.js');
const { startServer, PYTHON, REPO_ROOT } = require('../support/python-server.js');

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
/** @type {Awaited<ReturnType<typeof startServer>>} TLS + tokens */
let server;
/** @type {Awaited<ReturnType<typeof startServer>>} mutual TLS + tokens with a certificate entry */
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

/** @param {string} address @param {import('../src/index').ClientOptions} options */
function connect(address, options) {
  const client = new RunControlClient(address, { deadlineMs: 10_000, ...options });
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

test('tokens by option over TLS: roles, ErrorInfo, watch streams', async () => {
  const admin = connect(server.address, { token: TOKENS.admin, tls: { ca: ca() } });
  const reader = connect(server.address, { token: TOKENS.reader, tls: { ca: ca() } });
  const anonymous = connect(server.address, { token: null, tls: { ca: ca() } });
  const threadId = `thread-${randomUUID()}`;
  const { run } = await admin.createRun({ thread_id: threadId });

  const denied = await rejection(reader.cancelRun({ run_id: run.run_id }));
  assert.equal(denied.codeName, 'PERMISSION_DENIED');
  assert.equal(denied.reason, 'PERMISSION_DENIED');
  assert.deepEqual(denied.metadata, { method: 'CancelRun', required_role: 'admin', role: 'reader' });

  const missing = await rejection(anonymous.getRun({ run_id: run.run_id }));
  assert.equal(missing.codeName, 'UNAUTHENTICATED');
  assert.deepEqual(missing.metadata, { method: 'GetRun', required_role: 'reader' });

  // The watch stream carries the token too.
  const abort = new AbortController();
  for await (const message of reader.watchRuns({ thread_id: threadId, send_initial: true }, { signal: abort.signal })) {
    assert.deepEqual(
      message.events.map((/** @type {any} */ e) => e.run.run_id),
      [run.run_id],
    );
    break;
  }
  const watchDenied = await rejection(
    (async () => {
      for await (const _ of anonymous.watchRuns({ thread_id: threadId })) break;
    })(),
  );
  assert.equal(watchDenied.reason, 'UNAUTHENTICATED');
});

test('a plaintext client cannot reach a TLS server', async () => {
  const plain = connect(server.address, { token: TOKENS.admin, tls: null, deadlineMs: 5_000 });
  const err = await rejection(plain.hasInflight({ thread_id: 't' }));
  assert.equal(err.codeName, 'UNAVAILABLE');
});

test('token and TLS from the environment', async () => {
  const saved = Object.fromEntries(ENV_NAMES.map((name) => [name, process.env[name]]));
  try {
    process.env.RUNCONTROL_TOKEN = TOKENS.worker;
    process.env.RUNCONTROL_TLS_CA = certs.ca;
    const worker = connect(server.address, {});
    const err = await rejection(worker.setRunStatus({ run_id: 'no-such-run', status: 'RUN_STATUS_RUNNING' }));
    assert.equal(err.reason, 'RUN_NOT_FOUND'); // authorized: the server looked for the run
    process.env.RUNCONTROL_TLS_CA = path.join(dir, 'missing.pem');
    assert.throws(() => new RunControlClient(server.address), /RUNCONTROL_TLS_CA/);
  } finally {
    for (const [name, value] of Object.entries(saved)) {
      if (value === undefined) delete process.env[name];
      else process.env[name] = value;
    }
  }
});

test('mutual TLS: a client certificate maps to its role', async () => {
  const [cert, key] = certs.clients['worker-1'];
  const tls = { ca: ca(), cert: fs.readFileSync(cert), key: fs.readFileSync(key) };
  const worker = connect(mtlsServer.address, { token: null, tls });
  const notFound = await rejection(worker.setRunStatus({ run_id: 'no-such-run', status: 'RUN_STATUS_RUNNING' }));
  assert.equal(notFound.reason, 'RUN_NOT_FOUND');
  const denied = await rejection(worker.createRun({ thread_id: 't' }));
  assert.deepEqual(denied.metadata, { method: 'CreateRun', required_role: 'admin', role: 'worker' });

  const noCertificate = connect(mtlsServer.address, { token: TOKENS.admin, tls: { ca: ca() }, deadlineMs: 5_000 });
  assert.equal((await rejection(noCertificate.hasInflight({ thread_id: 't' }))).codeName, 'UNAVAILABLE');
  assert.throws(() => new RunControlClient(mtlsServer.address, { tls: { ca: ca(), cert: tls.cert } }), /go together/);
});
