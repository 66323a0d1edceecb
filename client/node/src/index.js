'use strict';
/**
 * Node.js client for `runcontrol.v1.RunControl`.
 *
 * Messages are plain objects shaped like the proto messages, as produced by
 * @grpc/proto-loader with these options (see README.md):
 *   keepCase: true   field names exactly as in the .proto (snake_case)
 *   longs: String    int64 fields (revisions) are decimal strings, e.g. "42":
 *                    revisions are store-wide counters that can exceed 2^53
 *                    on a long-lived PostgreSQL store, and a string never
 *                    loses precision. Requests accept string, number or bigint.
 *   enums: String    enum values are their names, e.g. "RUN_STATUS_RUNNING"
 *                    (requests also accept the numbers)
 *   defaults: true   unset scalars are present with their zero value, unset
 *                    message fields are null; proto3 `optional` fields are
 *                    absent (undefined) when unset
 *   oneofs: true     a virtual `_<field>` property names a set optional field
 *
 * Well-known types come from proto-loader's bundled google/protobuf and keep
 * their camelCase field names even with keepCase (e.g. Value.stringValue).
 *
 * Payloads travel as JSON text, exactly: every call sends the header
 * `runcontrol-payload-format: json`, so records carry `metadata_json` /
 * `kwargs_json` instead of the Structs; send `metadata_json: toJson(object)`
 * and read with `runMetadata(run)` / `runKwargs(run)` (integers beyond 2^53 are
 * BigInt). `toStruct` / `fromStruct` remain for the Struct fields.
 */

const path = require('node:path');
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');
const { decodeStatus } = require('./status');
const { resolveSecurity } = require('./auth');
const { parseJson, stringifyJson } = require('./json');

const ERROR_DOMAIN = 'runcontrol';
const STATUS_DETAILS_KEY = 'grpc-status-details-bin';
// The package's own copy of protos/ (`make proto` keeps it in sync; it ships in the
// npm package), so the client loads the same contract wherever it is installed.
const PROTO_ROOT = path.resolve(__dirname, '..', 'proto');
const PROTO_FILE = 'runcontrol/v1/run_control.proto';
/** Request header asking for payloads as JSON text (exact integers) in every RunRecord. */
const PAYLOAD_FORMAT_HEADER = 'runcontrol-payload-format';

/** @type {import('@grpc/proto-loader').Options} */
const LOADER_OPTIONS = Object.freeze({
  keepCase: true,
  longs: String,
  enums: String,
  defaults: true,
  oneofs: true,
  includeDirs: [PROTO_ROOT],
});

/** grpc status number -> name, e.g. 5 -> "NOT_FOUND". */
const CODE_NAMES = Object.freeze(
  Object.fromEntries(
    Object.entries(grpc.status)
      .filter(([name, value]) => typeof value === 'number' && /^[A-Z_]+$/.test(name))
      .map(([name, value]) => [value, name]),
  ),
);

/** @type {grpc.ServiceClientConstructor | undefined} */
let serviceConstructor;

/** Load run_control.proto once, lazily. */
function loadService() {
  if (!serviceConstructor) {
    const definition = protoLoader.loadSync(PROTO_FILE, LOADER_OPTIONS);
    const loaded = /** @type {any} */ (grpc.loadPackageDefinition(definition));
    serviceConstructor = /** @type {grpc.ServiceClientConstructor} */ (loaded.runcontrol.v1.RunControl);
  }
  return serviceConstructor;
}

/**
 * A failed RunControl call. Branch on `reason` (the google.rpc.ErrorInfo
 * reason, domain "runcontrol"), never on the message text.
 */
class RunControlError extends Error {
  /**
   * @param {object} init
   * @param {number} init.code grpc status number
   * @param {string} init.details the status message sent by the server
   * @param {string} [init.reason] ErrorInfo reason; "" when the server sent none
   * @param {Record<string, string>} [init.metadata] ErrorInfo metadata
   * @param {import('./index').RpcStatus | null} [init.status] the decoded google.rpc.Status, if any
   * @param {grpc.Metadata | null} [init.trailers] the call's trailing metadata
   * @param {unknown} [init.cause] the original grpc-js error
   */
  constructor({ code, details, reason = '', metadata = {}, status = null, trailers = null, cause }) {
    const codeName = CODE_NAMES[code] ?? `CODE_${code}`;
    super(`${codeName}: ${details}${reason ? ` [${reason}]` : ''}`, cause === undefined ? undefined : { cause });
    this.name = 'RunControlError';
    /** grpc status number, e.g. 9 */
    this.code = code;
    /** grpc status name, e.g. "FAILED_PRECONDITION" */
    this.codeName = codeName;
    /** the status message sent by the server */
    this.details = details;
    /** ErrorInfo reason, e.g. "THREAD_BUSY"; "" when the server sent no runcontrol ErrorInfo */
    this.reason = reason;
    /** ErrorInfo metadata, e.g. { thread_id: "t1", inflight_run_ids: "a,b" } */
    this.metadata = { ...metadata };
    /** the whole decoded google.rpc.Status, or null when the trailer was absent or malformed */
    this.status = status;
    /** the call's trailing metadata (grpc.Metadata), when known */
    this.trailers = trailers;
  }

  /**
   * Convert a grpc-js error (ServiceError / StatusObject-like) into a
   * RunControlError, decoding ErrorInfo from the `grpc-status-details-bin`
   * trailer. Anything else becomes an UNKNOWN RunControlError.
   * @param {unknown} err
   * @returns {RunControlError}
   */
  static fromGrpcError(err) {
    if (err instanceof RunControlError) return err;
    const e = /** @type {any} */ (err);
    if (!e || typeof e.code !== 'number') {
      return new RunControlError({ code: grpc.status.UNKNOWN, details: String(e?.message ?? e), cause: err });
    }
    const trailers = e.metadata instanceof grpc.Metadata ? e.metadata : null;
    const details = typeof e.details === 'string' ? e.details : String(e.message ?? '');
    /** @type {import('./index').RpcStatus | null} */
    let status = null;
    const raw = trailers ? trailers.get(STATUS_DETAILS_KEY) : [];
    for (const value of raw) {
      if (typeof value !== 'string') {
        status = decodeStatus(value);
        break;
      }
    }
    const info = status?.errorInfos.find((i) => i.domain === ERROR_DOMAIN);
    return new RunControlError({
      code: e.code,
      details,
      reason: info?.reason ?? '',
      metadata: info?.metadata ?? {},
      status,
      trailers,
      cause: err,
    });
  }
}

/** @param {AbortSignal} signal */
function abortReason(signal) {
  return signal.reason ?? new DOMException('This operation was aborted', 'AbortError');
}

/**
 * @param {number | undefined | null} ms
 * @returns {grpc.CallOptions}
 */
function callOptions(ms) {
  if (ms === undefined || ms === null || ms === Infinity) return {};
  if (typeof ms !== 'number' || !(ms > 0)) throw new TypeError(`deadlineMs must be a positive number, got ${ms}`);
  return { deadline: Date.now() + ms };
}

/**
 * The call's request metadata: the caller's (copied, never changed) plus the
 * JSON payload header, unless the caller set that header itself.
 * @param {grpc.Metadata | undefined} metadata
 * @returns {grpc.Metadata}
 */
function callMetadata(metadata) {
  const result = metadata ? metadata.clone() : new grpc.Metadata();
  if (result.get(PAYLOAD_FORMAT_HEADER).length === 0) result.set(PAYLOAD_FORMAT_HEADER, 'json');
  return result;
}

/** Unary RPCs: client method name -> RPC name. */
const UNARY = Object.freeze({
  createRun: 'CreateRun',
  getRun: 'GetRun',
  listRuns: 'ListRuns',
  setRunStatus: 'SetRunStatus',
  cancelRun: 'CancelRun',
  hasInflight: 'HasInflight',
  deleteRun: 'DeleteRun',
  waitRun: 'WaitRun',
  renewRunLease: 'RenewRunLease',
});

class RunControlClient {
  /**
   * @param {string} address "host:port"
   * @param {import('./index').ClientOptions} [options]
   */
  constructor(address, options = {}) {
    const Service = loadService();
    this._defaultDeadlineMs = options.deadlineMs;
    callOptions(this._defaultDeadlineMs); // validate early
    // TLS and the bearer token: from `options`, else RUNCONTROL_* variables (auth.js).
    const { credentials, interceptors } = resolveSecurity(options);
    const channelOptions = options.channelOptions ?? {};
    /** @type {grpc.Client & Record<string, Function>} */
    this._client = /** @type {any} */ (
      new Service(address, credentials, {
        ...channelOptions,
        interceptors: [...interceptors, ...(channelOptions.interceptors ?? [])],
      })
    );
  }

  /**
   * Resolve when the channel is connected, reject after `deadlineMs`.
   * @param {number} [deadlineMs]
   * @returns {Promise<void>}
   */
  waitForReady(deadlineMs = 10_000) {
    return new Promise((resolve, reject) => {
      this._client.waitForReady(Date.now() + deadlineMs, (err) => (err ? reject(err) : resolve()));
    });
  }

  /**
   * @param {string} rpc
   * @param {object} request
   * @param {import('./index').CallOptions} [options]
   * @returns {Promise<any>}
   */
  _unary(rpc, request, options = {}) {
    const { signal } = options;
    return new Promise((resolve, reject) => {
      if (signal?.aborted) {
        reject(abortReason(signal));
        return;
      }
      const deadlineMs = options.deadlineMs === undefined ? this._defaultDeadlineMs : options.deadlineMs;
      /** @type {grpc.ClientUnaryCall | undefined} */
      let call;
      const onAbort = () => call?.cancel();
      call = this._client[rpc](
        request ?? {},
        callMetadata(options.metadata),
        callOptions(deadlineMs),
        /** @param {grpc.ServiceError | null} err @param {any} response */
        (err, response) => {
          signal?.removeEventListener('abort', onAbort);
          if (!err) resolve(response);
          else if (signal?.aborted && err.code === grpc.status.CANCELLED) reject(abortReason(signal));
          else reject(RunControlError.fromGrpcError(err));
        },
      );
      signal?.addEventListener('abort', onAbort, { once: true });
    });
  }

  /**
   * Stream WatchRunsResponse messages. The call starts on the first `next()`;
   * breaking out of `for await`, calling `return()`, or aborting `signal`
   * cancels it at once. A server error is thrown as RunControlError after the
   * messages received before it; an abort throws the signal's reason
   * (an AbortError by default). The client-wide default deadline does not
   * apply to watches; pass `deadlineMs` to bound one.
   * @param {import('./index').WatchRunsRequest} [request]
   * @param {import('./index').CallOptions} [options]
   * @returns {AsyncGenerator<import('./index').WatchRunsResponse, void, undefined>}
   */
  async *watchRuns(request = {}, options = {}) {
    const { signal } = options;
    if (signal?.aborted) throw abortReason(signal);
    const call = /** @type {grpc.ClientReadableStream<any>} */ (
      this._client.WatchRuns(request ?? {}, callMetadata(options.metadata), callOptions(options.deadlineMs))
    );
    let ended = false;
    let cancelled = false;
    /** @type {RunControlError | null} */
    let failure = null;
    /** @type {(() => void) | null} */
    let wake = null;
    const notify = () => {
      const w = wake;
      wake = null;
      w?.();
    };
    const cancel = () => {
      if (!ended && !cancelled) {
        cancelled = true;
        call.cancel();
      }
      notify();
    };
    call.on('readable', notify);
    call.on('end', () => {
      ended = true;
      notify();
    });
    // grpc-js pushes the end of the stream, then emits 'error' for a non-OK
    // status while messages may still be buffered: keep them, throw after.
    // This listener stays attached so a late CANCELLED is never unhandled.
    call.on('error', (err) => {
      ended = true;
      if (!cancelled) failure = RunControlError.fromGrpcError(err);
      notify();
    });
    signal?.addEventListener('abort', cancel, { once: true });
    try {
      for (;;) {
        if (signal?.aborted) throw abortReason(signal);
        const message = call.read();
        if (message !== null) {
          yield message;
          continue;
        }
        if (failure) throw failure;
        if (ended) return;
        await new Promise((resolve) => {
          wake = /** @type {() => void} */ (resolve);
        });
      }
    } finally {
      signal?.removeEventListener('abort', cancel);
      cancel();
    }
  }

  /** Close the channel. Calls in progress are cancelled. */
  close() {
    this._client.close();
  }
}

for (const [method, rpc] of Object.entries(UNARY)) {
  Object.defineProperty(RunControlClient.prototype, method, {
    value: /** @this {RunControlClient} */ function unary(/** @type {object} */ request, /** @type {any} */ options) {
      return this._unary(rpc, request, options);
    },
    writable: true,
    configurable: true,
  });
}

// ---- helpers for well-known types -------------------------------------------

/**
 * JSON value -> google.protobuf.Value (proto-loader object form).
 * @param {unknown} value
 * @returns {object}
 */
function toValue(value) {
  if (value === null || value === undefined) return { nullValue: 'NULL_VALUE' };
  if (typeof value === 'number') return { numberValue: value };
  if (typeof value === 'string') return { stringValue: value };
  if (typeof value === 'boolean') return { boolValue: value };
  if (typeof value === 'bigint') return { numberValue: Number(value) };
  if (Array.isArray(value)) return { listValue: { values: value.map(toValue) } };
  if (typeof value === 'object') return { structValue: toStruct(/** @type {Record<string, unknown>} */ (value)) };
  throw new TypeError(`cannot convert ${typeof value} to google.protobuf.Value`);
}

/**
 * Plain JSON object -> google.protobuf.Struct, for `metadata` / `kwargs`.
 * @param {Record<string, unknown>} object
 * @returns {import('./index').Struct}
 */
function toStruct(object) {
  return { fields: Object.fromEntries(Object.entries(object ?? {}).map(([k, v]) => [k, toValue(v)])) };
}

/**
 * google.protobuf.Value -> JSON value.
 * @param {any} value
 * @returns {unknown}
 */
function fromValue(value) {
  if (!value) return null;
  switch (value.kind) {
    case 'numberValue':
      return value.numberValue;
    case 'stringValue':
      return value.stringValue;
    case 'boolValue':
      return value.boolValue;
    case 'structValue':
      return fromStruct(value.structValue);
    case 'listValue':
      return (value.listValue?.values ?? []).map(fromValue);
    default:
      return null;
  }
}

/**
 * google.protobuf.Struct (as received) -> plain JSON object; null/undefined -> {}.
 * @param {import('./index').Struct | null | undefined} struct
 * @returns {Record<string, unknown>}
 */
function fromStruct(struct) {
  return Object.fromEntries(Object.entries(struct?.fields ?? {}).map(([k, v]) => [k, fromValue(v)]));
}

/**
 * A JSON object -> its exact JSON text, for `metadata_json` / `kwargs_json`:
 * BigInt values keep every digit; NaN, Infinity and cycles throw.
 * @param {Record<string, unknown>} object
 * @returns {string}
 */
function toJson(object) {
  if (object === null || typeof object !== 'object' || Array.isArray(object)) {
    const kind = object === null ? 'null' : Array.isArray(object) ? 'an array' : typeof object;
    throw new TypeError(`a payload must be a plain object, got ${kind}`);
  }
  return stringifyJson(object);
}

/**
 * JSON text -> value; integers beyond Number.MAX_SAFE_INTEGER become BigInt.
 * @param {string} text
 * @returns {unknown}
 */
function fromJson(text) {
  return parseJson(text);
}

/**
 * A record's payload: its JSON text when sent (exact), else its Struct (a
 * server without the text form, or a call that asked for Structs).
 * @param {string | undefined} text
 * @param {import('./index').Struct | null | undefined} struct
 * @returns {Record<string, unknown>}
 */
function payloadOf(text, struct) {
  return text ? /** @type {Record<string, unknown>} */ (parseJson(text)) : fromStruct(struct);
}

/**
 * The metadata of a RunRecord as a plain object (see `payloadOf`).
 * @param {import('./index').RunRecord} run
 * @returns {Record<string, unknown>}
 */
function runMetadata(run) {
  return payloadOf(run.metadata_json, run.metadata);
}

/**
 * The kwargs of a RunRecord as a plain object (see `payloadOf`).
 * @param {import('./index').RunRecord} run
 * @returns {Record<string, unknown>}
 */
function runKwargs(run) {
  return payloadOf(run.kwargs_json, run.kwargs);
}

/**
 * google.protobuf.Timestamp -> Date (millisecond precision); null when unset.
 * @param {import('./index').Timestamp | null | undefined} ts
 * @returns {Date | null}
 */
function timestampToDate(ts) {
  if (!ts) return null;
  return new Date(Number(ts.seconds) * 1000 + Math.floor((ts.nanos ?? 0) / 1e6));
}

/**
 * Milliseconds -> google.protobuf.Duration, e.g. for CreateRun/WaitRun `timeout`.
 * @param {number} ms
 * @returns {import('./index').Duration}
 */
function durationFromMs(ms) {
  if (!Number.isFinite(ms)) throw new TypeError(`duration must be finite, got ${ms}`);
  const sign = ms < 0 ? -1 : 1;
  const abs = Math.abs(ms);
  const seconds = Math.floor(abs / 1000);
  const nanos = Math.round((abs - seconds * 1000) * 1e6);
  return { seconds: String(sign * seconds), nanos: sign * nanos };
}

module.exports = {
  RunControlClient,
  RunControlError,
  ERROR_DOMAIN,
  STATUS_DETAILS_KEY,
  PAYLOAD_FORMAT_HEADER,
  PROTO_ROOT,
  LOADER_OPTIONS,
  decodeStatus,
  toStruct,
  fromStruct,
  toJson,
  fromJson,
  runMetadata,
  runKwargs,
  timestampToDate,
  durationFromMs,
  /** the @grpc/grpc-js instance this package uses (for credentials, Metadata, status) */
  grpc,
};
