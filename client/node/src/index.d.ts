// Type declarations for @runcontrol/client (src/index.js). Message shapes follow
// protos/runcontrol/v1/*.proto as loaded by @grpc/proto-loader with
// { keepCase: true, longs: String, enums: String, defaults: true, oneofs: true }.
import * as grpc from '@grpc/grpc-js';
import type { Options as LoaderOptions } from '@grpc/proto-loader';

export { grpc };

/** int64 in a response: a decimal string, e.g. "42" (never loses precision). */
export type Int64 = string;
/** int64 in a request: string, number (must be a safe integer) or bigint. */
export type Int64Like = string | number | bigint;

export type RunStatus =
  | 'RUN_STATUS_UNSPECIFIED'
  | 'RUN_STATUS_PENDING'
  | 'RUN_STATUS_RUNNING'
  | 'RUN_STATUS_SUCCESS'
  | 'RUN_STATUS_ERROR'
  | 'RUN_STATUS_TIMEOUT'
  | 'RUN_STATUS_INTERRUPTED';
export type DisconnectMode = 'DISCONNECT_MODE_UNSPECIFIED' | 'DISCONNECT_MODE_CANCEL' | 'DISCONNECT_MODE_CONTINUE';
export type MultitaskStrategy =
  | 'MULTITASK_STRATEGY_UNSPECIFIED'
  | 'MULTITASK_STRATEGY_REJECT'
  | 'MULTITASK_STRATEGY_INTERRUPT'
  | 'MULTITASK_STRATEGY_ROLLBACK'
  | 'MULTITASK_STRATEGY_ENQUEUE';
export type CancelAction = 'CANCEL_ACTION_UNSPECIFIED' | 'CANCEL_ACTION_INTERRUPT' | 'CANCEL_ACTION_ROLLBACK';
export type EventType = 'EVENT_TYPE_UNSPECIFIED' | 'EVENT_TYPE_ADDED' | 'EVENT_TYPE_MODIFIED' | 'EVENT_TYPE_DELETED';

/** Requests accept enum names or their numbers. */
type EnumIn<T extends string> = T | number;

/** google.protobuf.Timestamp as received. */
export interface Timestamp {
  seconds: Int64;
  nanos: number;
}
/** google.protobuf.Duration; build one with durationFromMs(). */
export interface Duration {
  seconds: Int64Like;
  nanos?: number;
}
/** google.protobuf.Value (well-known types keep camelCase names). */
export interface Value {
  kind?: 'nullValue' | 'numberValue' | 'stringValue' | 'boolValue' | 'structValue' | 'listValue';
  nullValue?: 'NULL_VALUE' | number;
  numberValue?: number;
  stringValue?: string;
  boolValue?: boolean;
  structValue?: Struct;
  listValue?: { values: Value[] };
}
/** google.protobuf.Struct; build one with toStruct(), read one with fromStruct(). */
export interface Struct {
  fields: Record<string, Value>;
}
/** A JSON value as fromJson() reads it: integers beyond 2^53 are bigint. */
export type JsonValue = null | boolean | number | bigint | string | JsonValue[] | { [key: string]: JsonValue };

export interface RunRecord {
  run_id: string;
  thread_id: string;
  assistant_id?: string;
  status: RunStatus;
  on_disconnect: DisconnectMode;
  multitask_strategy: MultitaskStrategy;
  /** Null when the call asked for JSON payloads (every call of this client): read runMetadata(run). */
  metadata: Struct | null;
  /** Null when the call asked for JSON payloads: read runKwargs(run). */
  kwargs: Struct | null;
  created_at: Timestamp | null;
  updated_at: Timestamp | null;
  error?: string;
  cancel_action: CancelAction;
  cancel_reason?: string;
  worker_id?: string;
  deadline: Timestamp | null;
  create_revision: Int64;
  mod_revision: Int64;
  request_id?: string;
  /** The metadata as exact JSON text; "" for {} or when the call asked for Structs. */
  metadata_json: string;
  /** The kwargs as exact JSON text; "" for {} or when the call asked for Structs. */
  kwargs_json: string;
  /** Claims so far (0 before the first). */
  attempt: number;
  /** Claims allowed in all (at least 1). */
  max_attempts: number;
  /** The claiming worker's lease, when its claim asked for one; null otherwise. */
  lease_ttl: Duration | null;
}

export interface CreateRunRequest {
  thread_id: string;
  assistant_id?: string;
  on_disconnect?: EnumIn<DisconnectMode>;
  multitask_strategy?: EnumIn<MultitaskStrategy>;
  /** Prefer metadata_json: a Struct holds numbers as doubles. Set at most one of the two. */
  metadata?: Struct;
  /** Prefer kwargs_json. Set at most one of the two. */
  kwargs?: Struct;
  request_id?: string;
  timeout?: Duration;
  /** The metadata as JSON object text, exact: build it with toJson(). */
  metadata_json?: string;
  /** The kwargs as JSON object text, exact: build it with toJson(). */
  kwargs_json?: string;
  /** Claims the run may have in all, 1-100; 0 or unset means 1. */
  max_attempts?: number;
}
export interface CreateRunResponse {
  run: RunRecord;
  interrupted_runs: RunRecord[];
  queued_behind_run_ids: string[];
  replayed: boolean;
}
export interface GetRunRequest {
  run_id: string;
}
export interface GetRunResponse {
  run: RunRecord;
}
export interface ListRunsRequest {
  thread_id?: string;
  statuses?: EnumIn<RunStatus>[];
  page_size?: number;
  page_token?: string;
}
export interface ListRunsResponse {
  runs: RunRecord[];
  next_page_token: string;
  revision: Int64;
}
export interface SetRunStatusRequest {
  run_id: string;
  status: EnumIn<RunStatus>;
  error?: string;
  worker_id?: string;
  expected_mod_revision?: Int64Like;
  /** With a claim (RUNNING): a lease to renew with renewRunLease() before it lapses. */
  lease_ttl?: Duration;
}
export interface SetRunStatusResponse {
  run: RunRecord;
  changed: boolean;
}
export interface CancelRunRequest {
  run_id: string;
  action?: EnumIn<CancelAction>;
  reason?: string;
}
export interface CancelRunResponse {
  run: RunRecord;
  cancelled: boolean;
}
export interface HasInflightRequest {
  thread_id: string;
}
export interface HasInflightResponse {
  has_inflight: boolean;
  run_ids: string[];
  revision: Int64;
}
export interface DeleteRunRequest {
  run_id: string;
  expected_mod_revision?: Int64Like;
}
export interface DeleteRunResponse {
  run: RunRecord;
  revision: Int64;
}
export interface WaitRunRequest {
  run_id: string;
  timeout?: Duration;
  attach?: boolean;
}
export interface WaitRunResponse {
  run: RunRecord;
  done: boolean;
}
export interface RenewRunLeaseRequest {
  run_id: string;
  worker_id: string;
}
export interface RenewRunLeaseResponse {
  /** When the lease lapses unless renewed again (server clock). */
  lease_expires_at: Timestamp | null;
  run: RunRecord;
}
export interface WatchRunsRequest {
  thread_id?: string;
  run_ids?: string[];
  statuses?: EnumIn<RunStatus>[];
  start_revision?: Int64Like;
  send_initial?: boolean;
  progress_interval?: Duration;
}
export interface RunEvent {
  type: EventType;
  run: RunRecord;
  prev_status: RunStatus;
  revision: Int64;
}
export interface WatchRunsResponse {
  revision: Int64;
  events: RunEvent[];
  end_of_initial_set: boolean;
  progress_only: boolean;
}

/** PEM contents (not paths) for TLS; `ca` unset trusts the system's roots. */
export interface TlsOptions {
  ca?: Buffer | string | null;
  /** This client's certificate (mutual TLS), with `key`. */
  cert?: Buffer | string | null;
  key?: Buffer | string | null;
}

export interface ClientOptions {
  /**
   * Your own channel credentials (then leave `tls` out). Default: plaintext, or TLS
   * from `tls` / the RUNCONTROL_TLS_* variables.
   */
  credentials?: grpc.ChannelCredentials;
  /**
   * Bearer token sent as `authorization: Bearer <token>` on every call, watches
   * included. Absent: $RUNCONTROL_TOKEN; null: no token.
   */
  token?: string | null;
  /**
   * TLS. Absent: from $RUNCONTROL_TLS_CA, $RUNCONTROL_TLS_CLIENT_CERT and
   * $RUNCONTROL_TLS_CLIENT_KEY (file paths) when set; null: plaintext.
   */
  tls?: TlsOptions | null;
  /** Default deadline of every unary call, in ms (none when unset). Not applied to watchRuns. */
  deadlineMs?: number;
  /** Passed to the grpc-js channel. */
  channelOptions?: grpc.ChannelOptions;
}

export interface CallOptions {
  /** Deadline of this call in ms; overrides the client default; Infinity or null = none. */
  deadlineMs?: number | null;
  /** Cancels the call; the promise / iterator then rejects with `signal.reason`. */
  signal?: AbortSignal;
  /**
   * Request metadata (headers). The client adds `runcontrol-payload-format: json`
   * unless it is set here (e.g. to "struct" to get the Structs instead).
   */
  metadata?: grpc.Metadata;
}

/** Decoded google.protobuf.Any. */
export interface AnyMessage {
  type_url: string;
  value: Buffer;
}
/** Decoded google.rpc.ErrorInfo. */
export interface ErrorInfo {
  reason: string;
  domain: string;
  metadata: Record<string, string>;
}
/** Decoded google.rpc.Status, plus every ErrorInfo found in its details. */
export interface RpcStatus {
  code: number;
  message: string;
  details: AnyMessage[];
  errorInfos: ErrorInfo[];
}

export class RunControlError extends Error {
  name: 'RunControlError';
  /** grpc status number, e.g. 9. */
  code: number;
  /** grpc status name, e.g. "FAILED_PRECONDITION". */
  codeName: string;
  /** The status message sent by the server. */
  details: string;
  /** ErrorInfo reason (domain "runcontrol"), e.g. "THREAD_BUSY"; "" when none was sent. */
  reason: string;
  /** ErrorInfo metadata, e.g. { thread_id: "t1", inflight_run_ids: "a,b" }. */
  metadata: Record<string, string>;
  /** The decoded grpc-status-details-bin trailer, or null when absent or malformed. */
  status: RpcStatus | null;
  /** The call's trailing metadata, when known. */
  trailers: grpc.Metadata | null;
  constructor(init: {
    code: number;
    details: string;
    reason?: string;
    metadata?: Record<string, string>;
    status?: RpcStatus | null;
    trailers?: grpc.Metadata | null;
    cause?: unknown;
  });
  static fromGrpcError(err: unknown): RunControlError;
}

export class RunControlClient {
  constructor(address: string, options?: ClientOptions);
  waitForReady(deadlineMs?: number): Promise<void>;
  createRun(request: CreateRunRequest, options?: CallOptions): Promise<CreateRunResponse>;
  getRun(request: GetRunRequest, options?: CallOptions): Promise<GetRunResponse>;
  listRuns(request?: ListRunsRequest, options?: CallOptions): Promise<ListRunsResponse>;
  setRunStatus(request: SetRunStatusRequest, options?: CallOptions): Promise<SetRunStatusResponse>;
  cancelRun(request: CancelRunRequest, options?: CallOptions): Promise<CancelRunResponse>;
  hasInflight(request: HasInflightRequest, options?: CallOptions): Promise<HasInflightResponse>;
  deleteRun(request: DeleteRunRequest, options?: CallOptions): Promise<DeleteRunResponse>;
  waitRun(request: WaitRunRequest, options?: CallOptions): Promise<WaitRunResponse>;
  /** A worker's heartbeat; LEASE_NOT_HELD when the run is no longer its own. */
  renewRunLease(request: RenewRunLeaseRequest, options?: CallOptions): Promise<RenewRunLeaseResponse>;
  /** Breaking out of the loop, return(), or aborting `signal` cancels the call. */
  watchRuns(request?: WatchRunsRequest, options?: CallOptions): AsyncGenerator<WatchRunsResponse, void, undefined>;
  close(): void;
}

export const ERROR_DOMAIN: 'runcontrol';
export const STATUS_DETAILS_KEY: 'grpc-status-details-bin';
/** The request header every call sends with "json": payloads come back as exact JSON text. */
export const PAYLOAD_FORMAT_HEADER: 'runcontrol-payload-format';
/** Absolute path of the package's proto/ directory (a copy of the repository's protos/). */
export const PROTO_ROOT: string;
export const LOADER_OPTIONS: Readonly<LoaderOptions>;
/** Decode a serialized google.rpc.Status; null when malformed. */
export function decodeStatus(bytes: Uint8Array): RpcStatus | null;
export function toStruct(object: Record<string, unknown>): Struct;
export function fromStruct(struct: Struct | null | undefined): Record<string, unknown>;
/** A plain object -> exact JSON text (bigint keeps its digits); NaN, Infinity and cycles throw. */
export function toJson(object: Record<string, unknown>): string;
/** JSON text -> value; integers beyond Number.MAX_SAFE_INTEGER become bigint. */
export function fromJson(text: string): JsonValue;
/** A record's metadata: its metadata_json (exact) when sent, else its Struct. */
export function runMetadata(run: RunRecord): Record<string, JsonValue>;
/** A record's kwargs: its kwargs_json (exact) when sent, else its Struct. */
export function runKwargs(run: RunRecord): Record<string, JsonValue>;
export function timestampToDate(ts: Timestamp | null | undefined): Date | null;
export function durationFromMs(ms: number): Duration;
