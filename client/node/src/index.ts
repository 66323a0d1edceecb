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

/** The ErrorInfo domain of runcontrol's errors. */
export const ERROR_DOMAIN = 'runcontrol';
/** Request header asking for payloads as JSON text (exact integers) in every RunRecord. */
export const PAYLOAD_FORMAT_HEADER = 'runcontrol-payload-format';

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
 * The RunControlError for an error a call ended with, the caller's abort aside. The
 * client cancels a call only through its signal, so a CANCELLED, ABORTED or INTERNAL
 * error that connect-node made of a dropped or refused connection (a TLS mismatch, a
 * reset, a stream reset by the peer) is UNAVAILABLE, as gRPC clients report it, so
 * that retry logic keyed on UNAVAILABLE sees it. A status the server sent is kept.
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

function abortReason(signal: AbortSignal): unknown {
  return signal.reason ?? new DOMException('This operation was aborted', 'AbortError');
}

/** A deadline option in ms -> Connect's timeoutMs (undefined: none). */
function timeoutOf(ms: number | null | undefined): number | undefined {
  if (ms === undefined || ms === null || ms === Infinity) return undefined;
  if (typeof ms !== 'number' || !(ms > 0)) throw new TypeError(`deadlineMs must be a positive number, got ${ms}`);
  return ms;
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
    let timer: NodeJS.Timeout | undefined;
    const expired = new Promise<never>((_, reject) => {
      timer = setTimeout(
        () => reject(new RunControlError({ code: Code.DeadlineExceeded, details: `not ready within ${deadlineMs} ms` })),
        deadlineMs,
      );
    });
    try {
      await Promise.race([this.connectOnce(), expired]);
    } finally {
      clearTimeout(timer);
    }
  }

  private async connectOnce(): Promise<void> {
    if (this.sessionManager) {
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

  private async unary<I, O>(
    method: (request: I, options?: ConnectCallOptions) => Promise<O>,
    request: I,
    options: CallOptions = {},
  ): Promise<O> {
    const { signal } = options;
    if (signal?.aborted) throw abortReason(signal);
    const deadlineMs = options.deadlineMs === undefined ? this.defaultDeadlineMs : options.deadlineMs;
    const callOptions: ConnectCallOptions = { timeoutMs: timeoutOf(deadlineMs) ?? 0 };
    if (signal) callOptions.signal = signal;
    if (options.headers) callOptions.headers = options.headers;
    try {
      return await method(request, callOptions);
    } catch (err) {
      if (signal?.aborted) throw abortReason(signal);
      throw callError(err);
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
   * not apply to watches; pass `deadlineMs` to bound one.
   */
  async *watchRuns(request: WatchRunsInit = {}, options: CallOptions = {}): AsyncGenerator<WatchRunsResponse, void, undefined> {
    const { signal } = options;
    if (signal?.aborted) throw abortReason(signal);
    // The call's own signal: Connect's stream iterator has no return(), so leaving
    // the loop would not end the call; aborting this does, whatever the reason.
    const controller = new AbortController();
    const onAbort = () => controller.abort(signal?.reason);
    signal?.addEventListener('abort', onAbort, { once: true });
    const callOptions: ConnectCallOptions = { signal: controller.signal, timeoutMs: timeoutOf(options.deadlineMs) ?? 0 };
    if (options.headers) callOptions.headers = options.headers;
    try {
      for await (const message of this.rpc.watchRuns(request, callOptions)) yield message;
    } catch (err) {
      if (signal?.aborted) throw abortReason(signal);
      throw callError(err);
    } finally {
      signal?.removeEventListener('abort', onAbort);
      controller.abort();
    }
  }

  /** Close the connection(s); calls in progress are cancelled. */
  close(): void {
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
