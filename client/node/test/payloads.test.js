// Exact payloads: JSON text in and out, integers kept exact (bigint beyond 2^53),
// against the real Python server over both transports; and the JSON codec on its own.
import { describe, it, test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';

import { RunControlClient, PAYLOAD_FORMAT_HEADER, toJson, fromJson, runMetadata, runKwargs } from '../dist/index.js';
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

const BIG = 2n ** 60n + 1n;
const PAYLOAD = { recursion_limit: 100, big: BIG, f: 1.5, nested: { l: [1, 2.5, -3] } };

for (const transport of TRANSPORTS) {
  describe(transport, () => {
    /** @type {RunControlClient} */
    let client;

    before(async () => {
      client = new RunControlClient(server.addressFor(transport), { transport, deadlineMs: 10_000 });
      await client.waitForReady(10_000);
    });

    after(() => client?.close());

    it('2**60+1 and 100 round-trip exactly through the server', async () => {
      const threadId = `thread-${randomUUID()}`;
      const { run } = await client.createRun({
        threadId,
        metadataJson: toJson(PAYLOAD),
        kwargsJson: toJson({ neg: -(2n ** 70n), n: 7 }),
      });
      assert.ok(run);
      assert.equal(run.metadata, undefined); // the header: text instead of the Struct
      assert.equal(run.metadataJson, '{"big":1152921504606846977,"f":1.5,"nested":{"l":[1,2.5,-3]},"recursion_limit":100}');
      for (const record of [
        run,
        (await client.getRun({ runId: run.runId })).run,
        (await client.listRuns({ threadId })).runs[0],
        (await client.waitRun({ runId: run.runId, timeout: { seconds: 0n, nanos: 10_000_000 } })).run,
      ]) {
        assert.ok(record);
        const metadata = runMetadata(record);
        assert.deepEqual(metadata, PAYLOAD);
        assert.equal(typeof metadata.big, 'bigint');
        assert.equal(metadata.big, BIG);
        assert.equal(metadata.recursion_limit, 100); // a number, not a bigint
        assert.deepEqual(runKwargs(record), { neg: -(2n ** 70n), n: 7 });
      }
      for await (const message of client.watchRuns({ threadId, sendInitial: true })) {
        const watched = message.events[0].run;
        assert.ok(watched);
        assert.deepEqual(runMetadata(watched), PAYLOAD);
        break;
      }
    });

    it('a Struct payload from an old-style request reads back as numbers', async () => {
      const { run } = await client.createRun({ threadId: `thread-${randomUUID()}`, metadata: { n: 100, f: 0.5 } });
      assert.ok(run);
      assert.equal(run.metadataJson, '{"f":0.5,"n":100}');
      assert.deepEqual(runMetadata(run), { n: 100, f: 0.5 });
      // A caller that sets the header itself gets what it asked for: the Struct.
      const headers = new Headers({ [PAYLOAD_FORMAT_HEADER]: 'struct' });
      const got = await client.getRun({ runId: run.runId }, { headers });
      assert.equal(got.run?.metadataJson, '');
      assert.deepEqual(got.run?.metadata, { n: 100, f: 0.5 }); // a Struct is a JSON object
      assert.ok(got.run);
      assert.deepEqual(runMetadata(got.run), { n: 100, f: 0.5 }); // the Struct fallback
      assert.deepEqual([...headers], [[PAYLOAD_FORMAT_HEADER, 'struct']]); // not modified
    });

    it('invalid text is refused naming the field', async () => {
      for (const [field, text] of [
        ['metadata_json', '{"x": NaN}'],
        ['kwargs_json', '[1, 2]'],
        ['metadata_json', '{"x": 1'],
      ]) {
        const key = field === 'metadata_json' ? 'metadataJson' : 'kwargsJson';
        await assert.rejects(client.createRun({ threadId: `thread-${randomUUID()}`, [key]: text }), (err) => {
          assert.equal(/** @type {any} */ (err).reason, 'INVALID_ARGUMENT');
          assert.equal(/** @type {any} */ (err).metadata.field, field);
          return true;
        });
      }
    });
  });
}

test('Connect with JSON bodies (useBinaryFormat: false) keeps payloads and revisions exact', async () => {
  const client = new RunControlClient(server.httpAddress, { transport: 'connect', useBinaryFormat: false });
  try {
    const { run } = await client.createRun({ threadId: `thread-${randomUUID()}`, metadataJson: toJson(PAYLOAD) });
    assert.ok(run);
    assert.deepEqual(runMetadata(run), PAYLOAD);
    const got = await client.getRun({ runId: run.runId });
    assert.equal(got.run?.modRevision, run.modRevision);
    assert.equal(typeof run.modRevision, 'bigint');
    await assert.rejects(client.getRun({ runId: '' }), { name: 'RunControlError', reason: 'INVALID_ARGUMENT' });
  } finally {
    client.close();
  }
});

test('toJson writes bigint exactly and refuses what JSON cannot hold', () => {
  assert.equal(toJson({ a: BIG, b: [1, -0.25, null, undefined], c: 'é"\n', d: undefined }), '{"a":1152921504606846977,"b":[1,-0.25,null,null],"c":"é\\"\\n"}');
  assert.equal(toJson({ when: new Date(0), n: new Number(2) }), '{"when":"1970-01-01T00:00:00.000Z","n":2}');
  assert.throws(() => toJson({ x: NaN }), RangeError);
  assert.throws(() => toJson({ x: [Infinity] }), RangeError);
  assert.throws(() => toJson(/** @type {any} */ ([1])), TypeError);
  assert.throws(() => toJson(/** @type {any} */ (null)), TypeError);
  const cyclic = /** @type {Record<string, unknown>} */ ({});
  cyclic.self = cyclic;
  assert.throws(() => toJson(cyclic), TypeError);
});

test('fromJson keeps integers exact and otherwise reads as JSON.parse does', () => {
  assert.deepEqual(fromJson('[9007199254740991, 9007199254740992, -9007199254740993, 1e2, 1.0, -0]'), [
    9007199254740991,
    9007199254740992n,
    -9007199254740993n,
    100,
    1,
    -0,
  ]);
  const parsed = /** @type {any} */ (fromJson('{"__proto__": {"x": 1}}'));
  assert.equal(Object.getPrototypeOf(parsed), Object.prototype);
  assert.deepEqual(Object.keys(parsed), ['__proto__']);
  // Agreement with JSON.parse on texts without large integers, valid or not.
  const texts = [
    ' { "a" : [ true , false , null , "x\\u00e9\\ud83d\\ude00\\\\\\/" ] , "b" : { } , "c" : [ ] } ',
    '"\\u0041"',
    '-12.5e-3',
    '0',
    '{"a":1,"a":2}',
    '{',
    '[1,]',
    '01',
    '1.',
    '.5',
    '+1',
    '"\\x"',
    '"\t"',
    'nul',
    '[1 2]',
    '{"a" 1}',
    '',
    ' ',
    'true false',
  ];
  for (const text of texts) {
    let expected;
    try {
      expected = { value: JSON.parse(text) };
    } catch {
      expected = { error: true };
    }
    let got;
    try {
      got = { value: fromJson(text) };
    } catch (err) {
      assert.ok(err instanceof SyntaxError, `${JSON.stringify(text)}: ${err}`);
      got = { error: true };
    }
    assert.deepEqual(got, expected, JSON.stringify(text));
  }
  // Round trip: fromJson(toJson(x)) is x, for random nested values with large integers.
  let seed = 42;
  const next = () => {
    seed = (seed * 1103515245 + 12345) % 2 ** 31;
    return seed / 2 ** 31;
  };
  /** @param {number} depth @returns {any} */
  const random = (depth) => {
    const pick = Math.floor(next() * (depth > 3 ? 5 : 7));
    if (pick === 0) return null;
    if (pick === 1) return next() < 0.5;
    if (pick === 2) return Math.floor(next() * 2 ** 40) - 2 ** 39;
    if (pick === 3) return BigInt(Math.floor(next() * 2 ** 30)) * 2n ** 40n + 2n ** 53n;
    if (pick === 4) return String.fromCharCode(...Array.from({ length: 4 }, () => Math.floor(next() * 0x3000)));
    if (pick === 5) return Array.from({ length: Math.floor(next() * 4) }, () => random(depth + 1));
    return Object.fromEntries(Array.from({ length: Math.floor(next() * 4) }, (_, i) => [`k${i}`, random(depth + 1)]));
  };
  for (let i = 0; i < 200; i++) {
    const value = { v: random(0) };
    assert.deepEqual(fromJson(toJson(value)), value);
  }
});
