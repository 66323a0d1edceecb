'use strict';
/**
 * Decoding of the `grpc-status-details-bin` trailer: a serialized
 * `google.rpc.Status` whose `details` are `google.protobuf.Any` messages, one of
 * which is a `google.rpc.ErrorInfo`.
 *
 * The three messages are tiny, so they are decoded by hand from the protobuf
 * wire format instead of pulling in a second protobuf runtime. Field numbers
 * follow the local copies in third_party/googleapis/google/rpc/*.proto (same numbers as
 * upstream googleapis); test/status.test.js checks these constants against
 * those files and against bytes serialized by the Python protobuf runtime.
 *
 * Decoding never throws: a malformed trailer yields `null`, so it can never hide
 * the original gRPC error.
 */

/** Field numbers, mirrored from third_party/googleapis/google/rpc/*.proto and google/protobuf/any.proto. */
const FIELDS = Object.freeze({
  status: Object.freeze({ code: 1, message: 2, details: 3 }),
  any: Object.freeze({ type_url: 1, value: 2 }),
  errorInfo: Object.freeze({ reason: 1, domain: 2, metadata: 3 }),
  mapEntry: Object.freeze({ key: 1, value: 2 }),
});

const ERROR_INFO_TYPE = 'google.rpc.ErrorInfo';

const WIRE_VARINT = 0;
const WIRE_FIXED64 = 1;
const WIRE_LEN = 2;
const WIRE_FIXED32 = 5;

class WireError extends Error {}

/**
 * Iterate over the fields of one serialized message.
 * Yields `{ field, wire, value }` where `value` is a BigInt for varints and a
 * Buffer (a view, not a copy) for length-delimited fields; fixed-width fields
 * are skipped. Groups (wire types 3/4) and truncated input throw WireError.
 * @param {Buffer} buf
 */
function* readFields(buf) {
  let pos = 0;
  const varint = () => {
    let result = 0n;
    let shift = 0n;
    for (let i = 0; i < 10; i += 1) {
      if (pos >= buf.length) throw new WireError('truncated varint');
      const byte = buf[pos];
      pos += 1;
      result |= BigInt(byte & 0x7f) << shift;
      if ((byte & 0x80) === 0) return result;
      shift += 7n;
    }
    throw new WireError('varint longer than 10 bytes');
  };
  while (pos < buf.length) {
    const tag = varint();
    const field = Number(tag >> 3n);
    const wire = Number(tag & 7n);
    if (field === 0) throw new WireError('field number 0');
    if (wire === WIRE_VARINT) {
      yield { field, wire, value: varint() };
    } else if (wire === WIRE_LEN) {
      const len = varint();
      if (len > BigInt(buf.length - pos)) throw new WireError('truncated length-delimited field');
      const end = pos + Number(len);
      yield { field, wire, value: buf.subarray(pos, end) };
      pos = end;
    } else if (wire === WIRE_FIXED64 || wire === WIRE_FIXED32) {
      pos += wire === WIRE_FIXED64 ? 8 : 4;
      if (pos > buf.length) throw new WireError('truncated fixed-width field');
    } else {
      throw new WireError(`unsupported wire type ${wire}`);
    }
  }
}

/** @param {Buffer} b */
const utf8 = (b) => b.toString('utf8');

/**
 * @param {Buffer} buf
 * @returns {{ reason: string, domain: string, metadata: Record<string, string> }}
 */
function decodeErrorInfo(buf) {
  const info = { reason: '', domain: '', metadata: /** @type {Record<string,string>} */ ({}) };
  for (const { field, wire, value } of readFields(buf)) {
    if (wire !== WIRE_LEN) continue;
    const bytes = /** @type {Buffer} */ (value);
    if (field === FIELDS.errorInfo.reason) info.reason = utf8(bytes);
    else if (field === FIELDS.errorInfo.domain) info.domain = utf8(bytes);
    else if (field === FIELDS.errorInfo.metadata) {
      let key = '';
      let val = '';
      for (const entry of readFields(bytes)) {
        if (entry.wire !== WIRE_LEN) continue;
        if (entry.field === FIELDS.mapEntry.key) key = utf8(/** @type {Buffer} */ (entry.value));
        else if (entry.field === FIELDS.mapEntry.value) val = utf8(/** @type {Buffer} */ (entry.value));
      }
      info.metadata[key] = val; // proto3 maps: the last entry for a key wins
    }
  }
  return info;
}

/**
 * @param {Buffer} buf
 * @returns {{ type_url: string, value: Buffer }}
 */
function decodeAny(buf) {
  const any = { type_url: '', value: Buffer.alloc(0) };
  for (const { field, wire, value } of readFields(buf)) {
    if (wire !== WIRE_LEN) continue;
    if (field === FIELDS.any.type_url) any.type_url = utf8(/** @type {Buffer} */ (value));
    else if (field === FIELDS.any.value) any.value = Buffer.from(/** @type {Buffer} */ (value));
  }
  return any;
}

/** @param {string} typeUrl */
function isErrorInfo(typeUrl) {
  // "type.googleapis.com/google.rpc.ErrorInfo"; the host part is not significant.
  return typeUrl === ERROR_INFO_TYPE || typeUrl.endsWith(`/${ERROR_INFO_TYPE}`);
}

/**
 * Decode a serialized google.rpc.Status.
 * @param {Uint8Array} bytes
 * @returns {import('./index').RpcStatus | null} null when the bytes are not a valid Status
 */
function decodeStatus(bytes) {
  try {
    const buf = Buffer.isBuffer(bytes) ? bytes : Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
    /** @type {import('./index').RpcStatus} */
    const status = { code: 0, message: '', details: [], errorInfos: [] };
    for (const { field, wire, value } of readFields(buf)) {
      if (field === FIELDS.status.code && wire === WIRE_VARINT) {
        status.code = Number(BigInt.asIntN(32, /** @type {bigint} */ (value)));
      } else if (field === FIELDS.status.message && wire === WIRE_LEN) {
        status.message = utf8(/** @type {Buffer} */ (value));
      } else if (field === FIELDS.status.details && wire === WIRE_LEN) {
        status.details.push(decodeAny(/** @type {Buffer} */ (value)));
      }
    }
    for (const detail of status.details) {
      if (isErrorInfo(detail.type_url)) status.errorInfos.push(decodeErrorInfo(detail.value));
    }
    return status;
  } catch (err) {
    if (err instanceof WireError || err instanceof RangeError) return null;
    throw err;
  }
}

module.exports = { decodeStatus, FIELDS, ERROR_INFO_TYPE };
