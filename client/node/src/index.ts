/**
 * Node.js client for `runcontrol.v1.RunControl`, over gRPC (HTTP/2, the server's
 * gRPC port) or Connect (HTTP/1.1, the server's `--http-listen` port).
 *
 * Messages are the protobuf-es (v2) types generated from protos/ by `make proto`
 * (src/gen, re-exported here): camelCase field names (`runId`, `modRevision`),
 * enums as TypeScript enums (`RunStatus.RUNNING === 2`), int64 revisions as
 * `bigint`, `google.protobuf.Struct` as a plain JSON object, Timestamp and
 * Duration as messages (`timestampToDate`, `durationFromMs`). Requests take the
 * init shape: a partial plain object, unset fields default.
 *
 * Payloads travel as JSON text, exactly: every call sends the header
 * `runcontrol-payload-format: json`, so records carry `metadataJson` /
 * `kwargsJson` instead of the Structs; send `metadataJson: toJson(object)` and
 * read with `runMetadata(run)` / `runKwargs(run)` (integers beyond 2^53 are bigint).
 */
import * as http from 'node:http';
import * as https from 'node:https';
import * as net from 'node:net';
import * as tls from 'node:tls';
import { create, type DescMessage, type MessageInitShape } from '@bufbuild/protobuf';
import { AnySchema, anyPack, timestampDate, type Duration, type Timestamp } from '@bufbuild/protobuf/wkt';
import {
  Code,
  ConnectError,
  createClient,
  type CallOptions as ConnectCallOptions,
  type Client,
  type Interceptor,
  type Transport,
} from '@connectrpc/connect';
import { createConnectTransport, createGrpcTransport, Http2SessionManager } from '@connectrpc/connect-node';

import { ErrorInfoSchema, type ErrorInfo } from './gen/google/rpc/error_details_pb.js';
import { StatusSchema, type Status } from './gen/google/rpc/status_pb.js';
import type { RunRecord } from './gen/runcontrol/v1/run_pb.js';
import {
  RunControl,
  type CancelRunRequestSchema,
  type CancelRunResponse,
  type CreateRunRequestSchema,
  type CreateRunResponse,
  type DeleteRunRequestSchema,
  type DeleteRunResponse,
  type GetRunRequestSchema,
  type GetRunResponse,
  type HasInflightRequestSchema,
  type HasInflightResponse,
  type ListRunsRequestSchema,
  type ListRunsResponse,
  type RenewRunLeaseRequestSchema,
  type RenewRunLeaseResponse,
  type SetRunStatusRequestSchema,
  type SetRunStatusResponse,
  type WaitRunRequestSchema,
  type WaitRunResponse,
  type WatchRunsRequestSchema,
  type WatchRunsResponse,
} from './gen/runcontrol/v1/run_control_pb.js';
import { bearerInterceptor, resolveSecurity, type Security, type SecurityOptions, type TlsOptions } from './auth.js';
import { parseJson, stringifyJson, type JsonValue } from './json.js';
import { resumingWatch, type ResumingWatchOptions } from './watch.js';

// The contract, straight from the generated code: every message type and its schema,
// the enums and the service descriptor.
export * from './gen/runcontrol/v1/run_pb.js';
export * from './gen/runcontrol/v1/run_control_pb.js';
export { ErrorInfoSchema, type ErrorInfo } from './gen/google/rpc/error_details_pb.js';
export { StatusSchema, type Status } from './gen/google/rpc/status_pb.js';
export { Code, ConnectError, type Interceptor } from '@connectrpc/connect';
export { create, type MessageInitShape } from '@bufbuild/protobuf';
export { durationFromMs, type Duration, type Timestamp } from '@bufbuild/protobuf/wkt';
export type { JsonValue, SecurityOptions, TlsOptions };
export { ENV } from './auth.js';
export type { ResumingWatchOptions, Resync, ResyncReason } from './watch.js';

/** The ErrorInfo domain of runcontrol's errors. */
export const ERROR_DOMAIN = 'runcontrol';
/** Request header asking for payloads as JSON text (exact integers) in every RunRecord. */
export const PAYLOAD_FORMAT_HEADER = 'runcontrol-payload-format';
/**
 * Response header of every WatchRuns stream: the identity of the server's store. Revisions
 * are positions in one store; another id (an in-memory server that restarted) means the
 * revisions seen before mean nothing there: re-list instead of resuming.
 */
export const STORE_ID_HEADER = 'runcontrol-store-id';

/**
 * `grpc`: gRPC over HTTP/2, to the server's gRPC port (`--listen`).
 * `connect`: the Connect protocol over HTTP/1.1, to the server's HTTP port
 * (`--http-listen`), for where HTTP/1.1 is all there is (proxies, load balancers).
 */
export type TransportKind = 'grpc' | 'connect';

export interface ClientOptions extends SecurityOptions {
  /** Which protocol and port `address` is; default `grpc`. */
  transport?: TransportKind;
  /** Default deadline of every unary call, in ms (none when unset). Not applied to watchRuns. */
  deadlineMs?: number;
  /** More Connect interceptors, run after the client's own (token, payload header). */
  interceptors?: Interceptor[];
  /** Connect transport only: binary protobuf (default) or, with false, JSON bodies. */
  useBinaryFormat?: boolean;
}

export interface CallOptions {
  /** Deadline of this call in ms; overrides the client default; Infinity or null: none. */
  deadlineMs?: number | null;
  /** Cancels the call; the promise / iterator then rejects with `signal.reason`. */
  signal?: AbortSignal;
  /**
   * Request headers. The client adds `runcontrol-payload-format: json` unless it is
   * set here (e.g. to "struct" to get the Structs instead).
   */
  headers?: HeadersInit;
  /** Called with the response headers once they arrive. */
  onHeader?: (headers: Headers) => void;
  /** Called with the response trailers when the call ends without an error. */
  onTrailer?: (trailers: Headers) => void;
}

/**
 * What `watchRuns` returns: an async generator of the stream's messages, and the
 * store identity (`runcontrol-store-id`) the server announced, once its response
 * headers arrived (before the first message or error); null until then, or when the
 * server announced none.
 */
export interface WatchStream extends AsyncGenerator<WatchRunsResponse, void, undefined> {
  readonly storeId: string | null;
}

/** Request init shapes: partial plain objects, as `create(Schema, init)` takes them. */
export type CreateRunInit = MessageInitShape<typeof CreateRunRequestSchema>;
export type GetRunInit = MessageInitShape<typeof GetRunRequestSchema>;
export type ListRunsInit = MessageInitShape<typeof ListRunsRequestSchema>;
export type SetRunStatusInit = MessageInitShape<typeof SetRunStatusRequestSchema>;
export type CancelRunInit = MessageInitShape<typeof CancelRunRequestSchema>;
export type HasInflightInit = MessageInitShape<typeof HasInflightRequestSchema>;
export type DeleteRunInit = MessageInitShape<typeof DeleteRunRequestSchema>;
export type WaitRunInit = MessageInitShape<typeof WaitRunRequestSchema>;
export type RenewRunLeaseInit = MessageInitShape<typeof RenewRunLeaseRequestSchema>;
export type WatchRunsInit = MessageInitShape<typeof WatchRunsRequestSchema>;

/** gRPC status names by number (Connect's codes are the same numbers). */
const CODE_NAMES: readonly string[] = [
  'OK',
  'CANCELLED',
  'UNKNOWN',
  'INVALID_ARGUMENT',
  'DEADLINE_EXCEEDED',
  'NOT_FOUND',
  'ALREADY_EXISTS',
  'PERMISSION_DENIED',
  'RESOURCE_EXHAUSTED',
  'FAILED_PRECONDITION',
  'ABORTED',
  'OUT_OF_RANGE',
  'UNIMPLEMENTED',
  'INTERNAL',
  'UNAVAILABLE',
  'DATA_LOSS',
  'UNAUTHENTICATED',
];

/** The error details of a ConnectError as a google.rpc.Status; null when it has none. */
function statusOf(error: ConnectError): Status | null {
  if (error.details.length === 0) return null;
  const details = error.details.map((detail) =>
    'desc' in detail
      ? anyPack(detail.desc, create(detail.desc as DescMessage, detail.value))
      : create(AnySchema, { typeUrl: `type.googleapis.com/${detail.type}`, value: detail.value }),
  );
  return create(StatusSchema, { code: error.code, message: error.rawMessage, details });
}

/**
 * A failed RunControl call, over either transport. Branch on `reason` (the
 * google.rpc.ErrorInfo reason, domain "runcontrol"), never on the message text.
 */
export class RunControlError extends Error {
  override name = 'RunControlError' as const;
  /** gRPC status number, e.g. 9 (Connect's `Code` enum has the same numbers). */
  readonly code: Code;
  /** gRPC status name, e.g. "FAILED_PRECONDITION". */
  readonly codeName: string;
  /** The status message sent by the server (for humans; do not parse it). */
  readonly details: string;
  /** ErrorInfo reason, e.g. "THREAD_BUSY"; "" when the server sent no runcontrol ErrorInfo. */
  readonly reason: string;
  /** ErrorInfo metadata, e.g. { thread_id: "t1", inflight_run_ids: "a,b" }. */
  readonly metadata: Record<string, string>;
  /** Every ErrorInfo among the error details (the runcontrol one gives `reason`). */
  readonly errorInfos: ErrorInfo[];
  /** The error details as a google.rpc.Status, or null when the server sent none. */
  readonly status: Status | null;
  /** The response headers and trailers of the call (gRPC trailers, Connect headers). */
  readonly trailers: Headers;

  constructor(init: {
    code: Code;
    details: string;
    reason?: string;
    metadata?: Record<string, string>;
    errorInfos?: ErrorInfo[];
    status?: Status | null;
    trailers?: Headers;
    cause?: unknown;
  }) {
    const { code, details, reason = '', metadata = {}, errorInfos = [], status = null, cause } = init;
    const codeName = CODE_NAMES[code] ?? `CODE_${code}`;
    super(`${codeName}: ${details}${reason ? ` [${reason}]` : ''}`, cause === undefined ? undefined : { cause });
    this.code = code;
    this.codeName = codeName;
    this.details = details;
    this.reason = reason;
    this.metadata = { ...metadata };
    this.errorInfos = errorInfos;
    this.status = status;
    this.trailers = init.trailers ?? new Headers();
  }

  /**
   * A RunControlError for any error a call may end with: a ConnectError's code,
   * message and details (ErrorInfo found with `findDetails`, over gRPC from the
   * `grpc-status-details-bin` trailer, over Connect from the error body); anything
   * else as ConnectError.from sees it (UNKNOWN, CANCELLED for an AbortError).
   */
  static from(err: unknown): RunControlError {
    if (err instanceof RunControlError) return err;
    const error = ConnectError.from(err);
    const errorInfos = error.findDetails(ErrorInfoSchema);
    const info = errorInfos.find((i) => i.domain === ERROR_DOMAIN);
    return new RunControlError({
      code: error.code,
      details: error.rawMessage,
      reason: info?.reason ?? '',
      metadata: info?.metadata ?? {},
      errorInfos,
      status: statusOf(error),
      trailers: error.metadata,
      cause: err,
    });
  }
}

/**
 * The RunControlError for an error a call ended with, the caller's abort and the
 * client's close() aside (both handled before this). A heuristic: connect-node reports
 * a dropped or refused connection (a TLS mismatch, a reset, a stream reset by the peer)
 * as CANCELLED, ABORTED or INTERNAL with a Node.js system error or an HTTP/2 RST_STREAM
 * behind it; such an error is reported UNAVAILABLE, as gRPC clients report it, so that
 * retry logic keyed on UNAVAILABLE sees it. It can misjudge a failure it has not been
 * seen with; a status the server sent is always kept.
 */
const DROPPED = new Set([Code.Canceled, Code.Aborted, Code.Internal]);

function droppedConnection(err: ConnectError): boolean {
  if (!DROPPED.has(err.code)) return false;
  // An HTTP/2 RST_STREAM from the peer (a server's status always comes in trailers).
  if (err.rawMessage.startsWith('http/2 stream closed with error code')) return true;
  // A Node.js system error (EPIPE, ECONNRESET, ERR_STREAM_DESTROYED, ...) behind it.
  let cause: unknown = err.cause;
  for (let depth = 0; cause instanceof Error && depth < 8; depth += 1) {
    if (typeof (cause as { code?: unknown }).code === 'string') return true;
    cause = cause.cause;
  }
  return false;
}

function callError(err: unknown): RunControlError {
  if (err instanceof ConnectError && droppedConnection(err)) {
    return RunControlError.from(new ConnectError(err.rawMessage, Code.Unavailable, err.metadata, undefined, err));
  }
  return RunControlError.from(err);
}

/** The error of a call that close() cancelled: CANCELLED, whatever the transport made of it. */
function closedError(err: unknown): RunControlError {
  return new RunControlError({ code: Code.Canceled, details: 'the client was closed', cause: err });
}

function abortReason(signal: AbortSignal): unknown {
  return signal.reason ?? new DOMException('This operation was aborted', 'AbortError');
}

/**
 * The longest timer Node keeps: a longer setTimeout fires after 1 ms instead, which
 * would fail a call with a long deadline at once (DEADLINE_EXCEEDED). ~24.8 days.
 */
export const MAX_DEADLINE_MS = 2 ** 31 - 1;

/** A deadline option in ms -> Connect's timeoutMs (undefined: none), at most MAX_DEADLINE_MS. */
function timeoutOf(ms: number | null | undefined): number | undefined {
  if (ms === undefined || ms === null || ms === Infinity) return undefined;
  if (typeof ms !== 'number' || !(ms > 0)) throw new TypeError(`deadlineMs must be a positive number, got ${ms}`);
  return Math.min(ms, MAX_DEADLINE_MS);
}

/** Adds `runcontrol-payload-format: json` to every call that does not set the header itself. */
const payloadFormatInterceptor: Interceptor = (next) => (request) => {
  if (!request.header.has(PAYLOAD_FORMAT_HEADER)) request.header.set(PAYLOAD_FORMAT_HEADER, 'json');
  return next(request);
};

/** "host:port" or a URL -> the base URL of `scheme`; a URL's scheme must agree with TLS. */
function baseUrlOf(address: string, security: Security): string {
  if (/^[a-z][a-z0-9+.-]*:\/\//i.test(address)) {
    const url = new URL(address);
    if (url.protocol !== 'http:' && url.protocol !== 'https:') throw new TypeError(`not an http(s) URL: ${address}`);
    if (url.protocol === 'http:' && security.tls) throw new TypeError(`TLS options with an http:// address: ${address}`);
    if (url.protocol === 'https:' && !security.tls) security.tls = {}; // the system's roots
    return url.href.replace(/\/$/, '');
  }
  if (!/^(\[[0-9a-fA-F:.]+\]|[^:/\s]+):[0-9]+$/.test(address)) throw new TypeError(`address must be "host:port" or a URL, got ${JSON.stringify(address)}`);
  return `${security.tls ? 'https' : 'http'}://${address}`;
}

export class RunControlClient {
  /** `grpc` or `connect`. */
  readonly transport: TransportKind;
  /** The base URL calls go to, e.g. "http://127.0.0.1:50051". */
  readonly baseUrl: string;
  private readonly defaultDeadlineMs: number | undefined;
  private readonly tls: Security['tls'];
  private readonly rpc: Client<typeof RunControl>;
  private readonly sessionManager: Http2SessionManager | null = null;
  private readonly agent: http.Agent | null = null;
  /** Aborted (and replaced) by close(): every call in progress listens to it. */
  private closing = new AbortController();
  /** waitForReady's probe sockets (Connect transport) while they are open. */
  private readonly probes = new Set<net.Socket>();

  /**
   * @param address the server's gRPC address ("host:port") for `transport: 'grpc'`
   *   (the default), its HTTP address for `transport: 'connect'`; or a URL
   *   ("https://host:port") whose scheme says whether TLS is used.
   */
  constructor(address: string, options: ClientOptions = {}) {
    const kind = options.transport ?? 'grpc';
    if (kind !== 'grpc' && kind !== 'connect') throw new TypeError(`transport must be "grpc" or "connect", got ${kind}`);
    this.transport = kind;
    this.defaultDeadlineMs = timeoutOf(options.deadlineMs); // validated early
    // TLS and the bearer token: from `options`, else RUNCONTROL_* variables (auth.ts).
    const security = resolveSecurity(options);
    this.baseUrl = baseUrlOf(address, security);
    this.tls = security.tls;
    const interceptors = [
      ...(security.token ? [bearerInterceptor(security.token)] : []),
      payloadFormatInterceptor,
      ...(options.interceptors ?? []),
    ];
    let transport: Transport;
    if (kind === 'grpc') {
      // Our own session manager, so that close() can end the HTTP/2 connection.
      this.sessionManager = new Http2SessionManager(this.baseUrl, undefined, { ...this.tls });
      transport = createGrpcTransport({ baseUrl: this.baseUrl, sessionManager: this.sessionManager, interceptors });
    } else {
      this.agent = this.tls ? new https.Agent({ keepAlive: true, ...this.tls }) : new http.Agent({ keepAlive: true });
      transport = createConnectTransport({
        baseUrl: this.baseUrl,
        httpVersion: '1.1',
        nodeOptions: { agent: this.agent },
        useBinaryFormat: options.useBinaryFormat ?? true,
        interceptors,
      });
    }
    this.rpc = createClient(RunControl, transport);
  }

  /** Resolve once the server accepts a connection, reject after `deadlineMs`. */
  async waitForReady(deadlineMs = 10_000): Promise<void> {
    // Aborted when the deadline wins, so that the probe socket is not left connecting.
    const probe = new AbortController();
    let timer: NodeJS.Timeout | undefined;
    const expired = new Promise<never>((_, reject) => {
      timer = setTimeout(() => {
        probe.abort();
        reject(new RunControlError({ code: Code.DeadlineExceeded, details: `not ready within ${deadlineMs} ms` }));
      }, Math.min(deadlineMs, MAX_DEADLINE_MS));
    });
    try {
      await Promise.race([this.connectOnce(probe.signal), expired]);
    } finally {
      clearTimeout(timer);
    }
  }

  private async connectOnce(signal: AbortSignal): Promise<void> {
    if (this.sessionManager) {
      // The session manager's connection attempt is the client's own: close() ends it.
      const state = await this.sessionManager.connect();
      if (state === 'error') throw RunControlError.from(ConnectError.from(this.sessionManager.error(), Code.Unavailable));
      return;
    }
    // HTTP/1.1 keeps no connection open between calls: check that one can be made.
    const url = new URL(this.baseUrl);
    const host = url.hostname.replace(/^\[|\]$/g, '');
    const port = Number(url.port || (url.protocol === 'https:' ? 443 : 80));
    await new Promise<void>((resolve, reject) => {
      const socket = this.tls
        ? tls.connect({ host, port, ...this.tls, ...(net.isIP(host) ? {} : { servername: host }) })
        : net.connect({ host, port });
      this.probes.add(socket);
      const onAbort = () => socket.destroy();
      signal.addEventListener('abort', onAbort, { once: true });
      socket.once('close', () => {
        this.probes.delete(socket);
        signal.removeEventListener('abort', onAbort);
        // Closed before it connected or failed: by the deadline, or by close().
        reject(new RunControlError({ code: Code.Canceled, details: 'the connection attempt was closed' }));
      });
      socket.once(this.tls ? 'secureConnect' : 'connect', () => {
        socket.destroy();
        resolve();
      });
      socket.once('error', (err) => {
        socket.destroy();
        reject(RunControlError.from(ConnectError.from(err, Code.Unavailable)));
      });
    });
  }

  /**
   * The signal of one call: aborted when the caller's `signal` is, or by close().
   * `release()` ends the call's ties to both (and aborts it, if it still runs).
   */
  private callSignal(signal: AbortSignal | undefined): { signal: AbortSignal; closing: AbortSignal; release: () => void } {
    const controller = new AbortController();
    const closing = this.closing.signal;
    const onAbort = () => controller.abort(signal?.reason);
    const onClose = () => controller.abort(closing.reason);
    signal?.addEventListener('abort', onAbort, { once: true });
    closing.addEventListener('abort', onClose, { once: true });
    const release = () => {
      signal?.removeEventListener('abort', onAbort);
      closing.removeEventListener('abort', onClose);
      controller.abort();
    };
    return { signal: controller.signal, closing, release };
  }

  private callOptions(options: CallOptions, signal: AbortSignal, timeoutMs: number | undefined): ConnectCallOptions {
    const callOptions: ConnectCallOptions = { signal, timeoutMs: timeoutMs ?? 0 };
    if (options.headers) callOptions.headers = options.headers;
    if (options.onHeader) callOptions.onHeader = options.onHeader;
    if (options.onTrailer) callOptions.onTrailer = options.onTrailer;
    return callOptions;
  }

  private async unary<I, O>(
    method: (request: I, options?: ConnectCallOptions) => Promise<O>,
    request: I,
    options: CallOptions = {},
  ): Promise<O> {
    const { signal } = options;
    if (signal?.aborted) throw abortReason(signal);
    const deadlineMs = options.deadlineMs === undefined ? this.defaultDeadlineMs : options.deadlineMs;
    const timeoutMs = timeoutOf(deadlineMs);
    const call = this.callSignal(signal);
    try {
      return await method(request, this.callOptions(options, call.signal, timeoutMs));
    } catch (err) {
      if (signal?.aborted) throw abortReason(signal);
      if (call.closing.aborted) throw closedError(err);
      throw callError(err);
    } finally {
      call.release();
    }
  }

  createRun(request: CreateRunInit, options?: CallOptions): Promise<CreateRunResponse> {
    return this.unary(this.rpc.createRun, request, options);
  }

  getRun(request: GetRunInit, options?: CallOptions): Promise<GetRunResponse> {
    return this.unary(this.rpc.getRun, request, options);
  }

  listRuns(request: ListRunsInit = {}, options?: CallOptions): Promise<ListRunsResponse> {
    return this.unary(this.rpc.listRuns, request, options);
  }

  setRunStatus(request: SetRunStatusInit, options?: CallOptions): Promise<SetRunStatusResponse> {
    return this.unary(this.rpc.setRunStatus, request, options);
  }

  cancelRun(request: CancelRunInit, options?: CallOptions): Promise<CancelRunResponse> {
    return this.unary(this.rpc.cancelRun, request, options);
  }

  hasInflight(request: HasInflightInit, options?: CallOptions): Promise<HasInflightResponse> {
    return this.unary(this.rpc.hasInflight, request, options);
  }

  deleteRun(request: DeleteRunInit, options?: CallOptions): Promise<DeleteRunResponse> {
    return this.unary(this.rpc.deleteRun, request, options);
  }

  waitRun(request: WaitRunInit, options?: CallOptions): Promise<WaitRunResponse> {
    return this.unary(this.rpc.waitRun, request, options);
  }

  /** A worker's heartbeat; LEASE_NOT_HELD when the run is no longer its own. */
  renewRunLease(request: RenewRunLeaseInit, options?: CallOptions): Promise<RenewRunLeaseResponse> {
    return this.unary(this.rpc.renewRunLease, request, options);
  }

  /**
   * Stream WatchRunsResponse messages (server streaming, over either transport).
   * The call starts on the first `next()`; breaking out of `for await`, calling
   * `return()`, or aborting `signal` cancels it at once. A server error is thrown
   * as RunControlError after the messages received before it; an abort throws the
   * signal's reason (an AbortError by default). The client's default deadline does
   * not apply to watches; pass `deadlineMs` to bound one. The returned stream's
   * `storeId` is the server's store identity, once its response headers arrived.
   */
  watchRuns(request: WatchRunsInit = {}, options: CallOptions = {}): WatchStream {
    const seen = { storeId: null as string | null };
    const stream = this.watchMessages(request, options, seen);
    Object.defineProperty(stream, 'storeId', { enumerable: true, get: () => seen.storeId });
    return stream as WatchStream;
  }

  private async *watchMessages(
    request: WatchRunsInit,
    options: CallOptions,
    seen: { storeId: string | null },
  ): AsyncGenerator<WatchRunsResponse, void, undefined> {
    const { signal } = options;
    if (signal?.aborted) throw abortReason(signal);
    const timeoutMs = timeoutOf(options.deadlineMs);
    // The call's own signal: Connect's stream iterator has no return(), so leaving
    // the loop would not end the call; release() aborts it, whatever the reason.
    const call = this.callSignal(signal);
    const callOptions = this.callOptions(options, call.signal, timeoutMs);
    callOptions.onHeader = (headers) => {
      seen.storeId = headers.get(STORE_ID_HEADER);
      options.onHeader?.(headers);
    };
    try {
      for await (const message of this.rpc.watchRuns(request, callOptions)) yield message;
    } catch (err) {
      if (signal?.aborted) throw abortReason(signal);
      if (call.closing.aborted) throw closedError(err);
      throw callError(err);
    } finally {
      call.release();
    }
  }

  /**
   * A watch that survives reconnects, as the Python client's `resuming_watch`: it
   * yields the stream's messages and remembers the last revision delivered. After
   * UNAVAILABLE (SHUTTING_DOWN included: a draining or restarting server, a dropped
   * connection) or a stream the server ended, it watches again from that revision + 1
   * after a backoff, so that every change is seen once. After REVISION_COMPACTED (it
   * fell behind the server's history), when another store answers (`storeId` changed:
   * an in-memory server that restarted, whose revisions are not the ones seen), or
   * when an initial set (`sendInitial`) was cut off half way, it re-lists instead: a
   * snapshot taken at one revision, handed whole to `onResync` (replace any state
   * built from earlier messages with it); messages continue after its revision. Any
   * other error is thrown, as is the last UNAVAILABLE once `maxReconnects` reconnects
   * in a row received nothing.
   */
  resumingWatch(request: WatchRunsInit, options: ResumingWatchOptions): AsyncGenerator<WatchRunsResponse, void, undefined> {
    return resumingWatch((attempt, callOptions) => this.watchRuns(attempt, callOptions), request, options);
  }

  /** Close the connection(s); calls in progress are cancelled (CANCELLED). */
  close(): void {
    this.closing.abort();
    this.closing = new AbortController(); // calls made after close() are not cancelled by it
    for (const socket of this.probes) socket.destroy();
    this.sessionManager?.abort();
    this.agent?.destroy();
  }
}

// ---- payloads and well-known types -----------------------------------------

/**
 * A JSON object -> its exact JSON text, for `metadataJson` / `kwargsJson`:
 * bigint values keep every digit; NaN, Infinity and cycles throw.
 */
export function toJson(object: Record<string, unknown>): string {
  if (object === null || typeof object !== 'object' || Array.isArray(object)) {
    const kind = object === null ? 'null' : Array.isArray(object) ? 'an array' : typeof object;
    throw new TypeError(`a payload must be a plain object, got ${kind}`);
  }
  return stringifyJson(object);
}

/** JSON text -> value; integers beyond Number.MAX_SAFE_INTEGER become bigint. */
export function fromJson(text: string): JsonValue {
  return parseJson(text);
}

/**
 * A record's payload: its JSON text when sent (exact), else its Struct (a
 * server without the text form, or a call that asked for Structs).
 */
function payloadOf(text: string | undefined, struct: Record<string, unknown> | undefined): Record<string, JsonValue> {
  if (text) return parseJson(text) as Record<string, JsonValue>;
  return (struct ?? {}) as Record<string, JsonValue>;
}

/** A record's metadata: its metadataJson (exact) when sent, else its Struct. */
export function runMetadata(run: RunRecord): Record<string, JsonValue> {
  return payloadOf(run.metadataJson, run.metadata);
}

/** A record's kwargs: its kwargsJson (exact) when sent, else its Struct. */
export function runKwargs(run: RunRecord): Record<string, JsonValue> {
  return payloadOf(run.kwargsJson, run.kwargs);
}

/** google.protobuf.Timestamp -> Date (millisecond precision); null when unset. */
export function timestampToDate(ts: Timestamp | null | undefined): Date | null {
  return ts ? timestampDate(ts) : null;
}

/** google.protobuf.Duration -> milliseconds. */
export function durationToMs(duration: Duration): number {
  return Number(duration.seconds) * 1000 + duration.nanos / 1e6;
}
