// RunControlError from the errors connect-node makes of a server's answer, over each
// protocol's way of carrying google.rpc.Status details (no server needed): gRPC's
// `grpc-status-details-bin` trailer and the Connect protocol's JSON error body.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { fromBinary } from '@bufbuild/protobuf';
import { findTrailerError } from '@connectrpc/connect/protocol-grpc';
import { errorFromJson } from '@connectrpc/connect/protocol-connect';

import { RunControlError, ConnectError, Code, StatusSchema, ErrorInfoSchema } from '../dist/index.js';

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

/** The gRPC trailers of a failed call carrying `statusBytes`. */
const trailers = (/** @type {Buffer} */ statusBytes) =>
  new Headers({
    'grpc-status': '9',
    'grpc-message': 'busy',
    'grpc-status-details-bin': statusBytes.toString('base64').replace(/=+$/, ''),
  });

const RUNCONTROL_INFO = { inflight_run_ids: 'a,b', thread_id: 't1', ünï: 'çødé' };

test('the generated schemas read a Status serialized by the Python runtime', () => {
  const status = fromBinary(StatusSchema, PY_STATUS);
  assert.equal(status.code, 9);
  assert.equal(status.message, 'thread t1 is busy ✓');
  assert.deepEqual(
    status.details.map((d) => d.typeUrl),
    [
      'type.googleapis.com/google.rpc.RetryInfo',
      'type.googleapis.com/google.rpc.ErrorInfo',
      'type.googleapis.com/google.rpc.ErrorInfo',
    ],
  );
  const info = fromBinary(ErrorInfoSchema, status.details[2].value);
  assert.equal(info.reason, 'THREAD_BUSY');
  assert.deepEqual(info.metadata, RUNCONTROL_INFO);
  assert.equal(fromBinary(StatusSchema, PY_NEGATIVE).code, -1);
});

test('gRPC: the runcontrol ErrorInfo from the grpc-status-details-bin trailer', () => {
  const connectError = findTrailerError(trailers(PY_STATUS));
  assert.ok(connectError);
  const err = RunControlError.from(connectError);
  assert.equal(err.codeName, 'FAILED_PRECONDITION');
  assert.equal(err.reason, 'THREAD_BUSY'); // not the example.com one
  assert.deepEqual(err.metadata, RUNCONTROL_INFO);
  assert.deepEqual(
    err.errorInfos.map((i) => [i.domain, i.reason]),
    [
      ['example.com', 'OTHER'],
      ['runcontrol', 'THREAD_BUSY'],
    ],
  );
  assert.equal(err.details, 'thread t1 is busy ✓'); // the Status's message wins over grpc-message
  assert.equal(err.status?.details.length, 3);
  assert.equal(err.trailers.get('grpc-status'), '9');
  assert.equal(err.cause, connectError);
  assert.equal(err.message, 'FAILED_PRECONDITION: thread t1 is busy ✓ [THREAD_BUSY]');
});

test('Connect: the runcontrol ErrorInfo from the JSON error body', () => {
  const status = fromBinary(StatusSchema, PY_STATUS);
  const body = {
    code: 'failed_precondition',
    message: 'busy',
    details: status.details.map((d) => ({
      type: d.typeUrl.slice(d.typeUrl.lastIndexOf('/') + 1),
      value: Buffer.from(d.value).toString('base64').replace(/=+$/, ''),
    })),
  };
  const err = RunControlError.from(errorFromJson(body, undefined, new ConnectError('fallback', Code.Unknown)));
  assert.equal(err.code, 9);
  assert.equal(err.reason, 'THREAD_BUSY');
  assert.deepEqual(err.metadata, RUNCONTROL_INFO);
});

test('no details, undecodable details, and errors that are not ConnectErrors', () => {
  const bare = RunControlError.from(new ConnectError('not implemented', Code.Unimplemented));
  assert.equal(bare.codeName, 'UNIMPLEMENTED');
  assert.equal(bare.reason, '');
  assert.deepEqual(bare.metadata, {});
  assert.equal(bare.status, null);

  const garbage = new ConnectError('internal error', Code.Internal);
  garbage.details = [{ type: 'google.rpc.ErrorInfo', value: new Uint8Array([0xff]) }];
  const fromGarbage = RunControlError.from(garbage);
  assert.equal(fromGarbage.reason, '');
  assert.deepEqual(fromGarbage.errorInfos, []);

  const foreign = RunControlError.from(new TypeError('boom'));
  assert.equal(foreign.codeName, 'UNKNOWN');
  assert.equal(foreign.details, 'boom');
  assert.ok(foreign instanceof Error);
  assert.equal(RunControlError.from(foreign), foreign);
});
