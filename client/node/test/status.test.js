'use strict';
// The hand-written google.rpc.Status / ErrorInfo decoder (no server needed).
const { test } = require('node:test');
const assert = require('node:assert/strict');
const path = require('node:path');
const protoLoader = require('@grpc/proto-loader');

const { decodeStatus, RunControlError, grpc } = require('../src/index.js');
const { FIELDS } = require('../src/status.js');

// Serialized by the Python protobuf runtime (google.rpc.status_pb2): code 9, a
// non-ASCII message, details = [RetryInfo, ErrorInfo(domain "example.com"),
// ErrorInfo(domain "runcontrol", reason THREAD_BUSY, 3 metadata entries)].
const PY_STATUS = Buffer.from(
  '08091215746872656164207431206973206275737920e29c931a2a0a28747970652e676f6f676c65617069732e636f6d2f676f6f676c' +
    '652e7270632e5265747279496e666f1a480a28747970652e676f6f676c65617069732e636f6d2f676f6f676c652e7270632e4572726f' +
    '72496e666f121c0a054f54484552120b6578616d706c652e636f6d1a060a01781201791a81010a28747970652e676f6f676c65617069' +
    '732e636f6d2f676f6f676c652e7270632e4572726f72496e666f12550a0b5448524541445f42555359120a72756e636f6e74726f6c1a' +
    '170a10696e666c696768745f72756e5f6964731203612c621a100a05c3bc6ec3af1207c3a7c3b864c3a91a0f0a097468726561645f69' +
    '6412027431',
  'hex',
);
// Status(code=-1, message="neg"): a negative int32 is a 10-byte varint.
const PY_NEGATIVE = Buffer.from('08ffffffffffffffffff0112036e6567', 'hex');

test('decodes a Status serialized by the Python runtime', () => {
  const status = decodeStatus(PY_STATUS);
  assert.ok(status);
  assert.equal(status.code, 9);
  assert.equal(status.message, 'thread t1 is busy ✓');
  assert.deepEqual(
    status.details.map((d) => d.type_url),
    [
      'type.googleapis.com/google.rpc.RetryInfo',
      'type.googleapis.com/google.rpc.ErrorInfo',
      'type.googleapis.com/google.rpc.ErrorInfo',
    ],
  );
  assert.deepEqual(status.errorInfos, [
    { reason: 'OTHER', domain: 'example.com', metadata: { x: 'y' } },
    {
      reason: 'THREAD_BUSY',
      domain: 'runcontrol',
      metadata: { inflight_run_ids: 'a,b', thread_id: 't1', ünï: 'çødé' },
    },
  ]);
});

test('decodes negative codes, empty input and Uint8Array input', () => {
  assert.equal(decodeStatus(PY_NEGATIVE)?.code, -1);
  assert.deepEqual(decodeStatus(Buffer.alloc(0)), { code: 0, message: '', details: [], errorInfos: [] });
  assert.equal(decodeStatus(new Uint8Array(PY_STATUS))?.errorInfos.length, 2);
});

test('malformed bytes decode to null instead of throwing', () => {
  assert.equal(decodeStatus(PY_STATUS.subarray(0, PY_STATUS.length - 3)), null); // truncated
  assert.equal(decodeStatus(Buffer.from([0x0b])), null); // group wire type
  assert.equal(decodeStatus(Buffer.from([0x08, 0x80])), null); // truncated varint
  assert.equal(decodeStatus(Buffer.from([0x00, 0x00])), null); // field number 0
  assert.equal(decodeStatus(Buffer.from('1a03' + '0a05', 'hex')), null); // bad nested length
});

test('unknown fields and fixed-width fields are skipped', () => {
  // field 7 fixed32, field 8 fixed64, field 9 varint, then code = 5.
  const bytes = Buffer.from('3d01020304' + '410102030405060708' + '4801' + '0805', 'hex');
  assert.equal(decodeStatus(bytes)?.code, 5);
});

test('field numbers match the local google/rpc protos', () => {
  const defs = protoLoader.loadSync(['google/rpc/status.proto', 'google/rpc/error_details.proto'], {
    includeDirs: [path.resolve(__dirname, '..', '..', '..', 'third_party', 'googleapis')],
    keepCase: true,
  });
  /** @param {string} name */
  const numbers = (name) => {
    const type = /** @type {any} */ (defs[name]).type;
    return Object.fromEntries(type.field.map((/** @type {any} */ f) => [f.name, f.number]));
  };
  assert.deepEqual(numbers('google.rpc.Status'), FIELDS.status);
  assert.deepEqual(numbers('google.rpc.ErrorInfo'), FIELDS.errorInfo);
  assert.deepEqual(numbers('google.protobuf.Any'), FIELDS.any);
  const entry = /** @type {any} */ (defs['google.rpc.ErrorInfo']).type.nestedType[0];
  assert.equal(entry.options.mapEntry, true);
  assert.deepEqual(Object.fromEntries(entry.field.map((/** @type {any} */ f) => [f.name, f.number])), FIELDS.mapEntry);
});

test('RunControlError.fromGrpcError reads the runcontrol ErrorInfo from the trailer', () => {
  const trailers = new grpc.Metadata();
  trailers.set('grpc-status-details-bin', PY_STATUS);
  const err = RunControlError.fromGrpcError(
    Object.assign(new Error('9 FAILED_PRECONDITION: busy'), { code: 9, details: 'busy', metadata: trailers }),
  );
  assert.equal(err.codeName, 'FAILED_PRECONDITION');
  assert.equal(err.reason, 'THREAD_BUSY'); // not the example.com one
  assert.deepEqual(err.metadata, { inflight_run_ids: 'a,b', thread_id: 't1', ünï: 'çødé' });
  assert.equal(err.details, 'busy');
  assert.equal(err.trailers, trailers);
  assert.ok(err.cause instanceof Error);
});

test('RunControlError.fromGrpcError without details, with garbage, and for non-grpc errors', () => {
  const bare = RunControlError.fromGrpcError({ code: 12, details: 'not implemented', metadata: new grpc.Metadata() });
  assert.equal(bare.codeName, 'UNIMPLEMENTED');
  assert.equal(bare.reason, '');
  assert.deepEqual(bare.metadata, {});
  assert.equal(bare.status, null);

  const trailers = new grpc.Metadata();
  trailers.set('grpc-status-details-bin', Buffer.from([0xff]));
  const garbage = RunControlError.fromGrpcError({ code: 13, details: 'internal error', metadata: trailers });
  assert.equal(garbage.reason, '');
  assert.equal(garbage.status, null);

  const foreign = RunControlError.fromGrpcError(new TypeError('boom'));
  assert.equal(foreign.codeName, 'UNKNOWN');
  assert.equal(foreign.details, 'boom');
});
