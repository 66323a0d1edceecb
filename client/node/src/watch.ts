/**
 * A watch that survives reconnects (`RunControlClient.resumingWatch`), as the Python
 * client's `resuming_watch` (client/runcontrol/_watch.py), with the same phases:
 *
 *   from now ──first message, SHUTTING_DOWN's resume revision──► streaming
 *   initial ──end of the initial set──► streaming
 *   initial ──interrupted after part of the set went out──► resyncing
 *   any ──REVISION_COMPACTED, or another store answers──► resyncing
 *   resyncing ──end of the snapshot (onResync)──► streaming
 */
import { Code } from '@connectrpc/connect';

import type { RunRecord } from './gen/runcontrol/v1/run_pb.js';
import type { WatchRunsResponse } from './gen/runcontrol/v1/run_control_pb.js';
// A cycle with index.ts, used only inside functions (never while the modules load).
import { RunControlError, type CallOptions, type WatchRunsInit, type WatchStream } from './index.js';

/**
 * Why a resuming watch re-listed: it fell behind the server's history, another store
 * answered (an in-memory server that restarted: its revisions are not the ones seen),
 * or the initial set (`sendInitial`) was cut off half way (the rest cannot be resumed).
 */
export type ResyncReason = 'REVISION_COMPACTED' | 'STORE_CHANGED' | 'INITIAL_SET_INTERRUPTED';

/** A re-list: the complete set of matching runs at `revision`. */
export interface Resync {
  reason: ResyncReason;
  /** The snapshot's revision: the messages that follow are the changes after it. */
  revision: bigint;
  /** Every run matching the request at `revision`: replace any state built before with it. */
  runs: RunRecord[];
  /** The store the snapshot was taken from (`runcontrol-store-id`; null: none announced). */
  storeId: string | null;
}

export interface ResumingWatchOptions {
  /** Called with each re-list, before any message after it is yielded; awaited. */
  onResync: (resync: Resync) => void | Promise<void>;
  /** Ends the watch (during a backoff too): it then throws `signal.reason`. */
  signal?: AbortSignal;
  /** Request headers of every stream. */
  headers?: HeadersInit;
  /** First backoff before a reconnect, in ms (default 100); doubles up to `maxBackoffMs`. */
  initialBackoffMs?: number;
  /** Longest backoff, in ms (default 5000). */
  maxBackoffMs?: number;
  /**
   * Reconnects in a row that received nothing before the interrupting error is thrown
   * (default: no bound). A message received resets the count and the backoff.
   */
  maxReconnects?: number | null;
  /** Waits out a backoff (default: a timer; tests pass their own). */
  sleep?: (ms: number, signal: AbortSignal | undefined) => Promise<void>;
}

type Phase = 'fromNow' | 'initial' | 'streaming' | 'resyncing';
type Open = (request: WatchRunsInit, options: CallOptions) => WatchStream;

function sleepFor(ms: number, signal: AbortSignal | undefined): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) {
      reject(signal.reason);
      return;
    }
    const onAbort = () => {
      clearTimeout(timer);
      reject(signal?.reason);
    };
    const timer = setTimeout(() => {
      signal?.removeEventListener('abort', onAbort);
      resolve();
    }, ms);
    signal?.addEventListener('abort', onAbort, { once: true });
  });
}

function resumeRevision(error: RunControlError): bigint | null {
  if (error.reason !== 'SHUTTING_DOWN') return null;
  try {
    return BigInt(error.metadata.resume_revision ?? '');
  } catch {
    return null;
  }
}

const noop = () => {};

export async function* resumingWatch(
  open: Open,
  request: WatchRunsInit,
  options: ResumingWatchOptions,
): AsyncGenerator<WatchRunsResponse, void, undefined> {
  const { onResync, signal, headers } = options;
  const initialBackoff = options.initialBackoffMs ?? 100;
  const maxBackoff = options.maxBackoffMs ?? 5_000;
  const limit = options.maxReconnects ?? null;
  const sleep = options.sleep ?? sleepFor;
  if (typeof onResync !== 'function') throw new TypeError('resumingWatch needs an onResync callback');
  if (limit !== null && !(limit >= 0)) throw new TypeError('maxReconnects must be at least 0');

  const start = BigInt(request.startRevision ?? 0);
  // Changed by the helpers below: an object, so that TypeScript does not narrow it.
  const at: { phase: Phase; revision: bigint; storeId: string | null; reason: ResyncReason } = {
    phase: request.sendInitial ? 'initial' : start > 0n ? 'streaming' : 'fromNow',
    revision: start > 0n ? start - 1n : 0n, // delivered up to here (streaming)
    storeId: null, // the store those revisions belong to
    reason: 'REVISION_COMPACTED', // why `resyncing` re-lists
  };
  let delay = initialBackoff;
  let inARow = 0;
  const streamingAfter = (r: bigint) => {
    at.phase = 'streaming';
    at.revision = r;
    at.reason = 'REVISION_COMPACTED';
  };
  const resync = (why: ResyncReason) => {
    at.phase = 'resyncing';
    at.reason = why;
  };

  for (;;) {
    if (signal?.aborted) throw signal.reason;
    const snapshot: RunRecord[] = [];
    let initialStarted = false;
    // A snapshot fixes its own revision: a start revision cannot go with it.
    const listing = at.phase === 'initial' || at.phase === 'resyncing';
    const attempt: WatchRunsInit = {
      ...request,
      sendInitial: listing,
      startRevision: !listing && at.phase === 'streaming' ? at.revision + 1n : 0n,
    };
    // This stream's own signal (the caller's too): ending the stream must not wait for
    // a message that may never come.
    const controller = new AbortController();
    const onAbort = () => controller.abort(signal?.reason);
    signal?.addEventListener('abort', onAbort, { once: true });
    let headerSeen = noop;
    const header = new Promise<void>((resolve) => {
      headerSeen = resolve;
    });
    const callOptions: CallOptions = { signal: controller.signal, onHeader: () => headerSeen() };
    if (headers) callOptions.headers = headers;
    const stream = open(attempt, callOptions);
    let error: RunControlError;
    let inCallback = false;
    try {
      let next = stream.next();
      // The store id comes with the response headers, before the first message or
      // error: another store's revisions mean nothing here, so re-list at once.
      await Promise.race([header, next.then(noop, noop)]);
      const announced = stream.storeId;
      if (announced !== null) {
        const known = at.storeId;
        at.storeId = announced;
        if (known !== null && known !== announced && at.phase !== 'resyncing') {
          resync('STORE_CHANGED');
          continue;
        }
      }
      for (let result = await next; !result.done; result = await next) {
        delay = initialBackoff; // a message: the connection works again
        inARow = 0;
        const message = result.value;
        if (at.phase === 'resyncing') {
          // Held back until complete: the caller replaces its state with the whole set.
          for (const event of message.events) if (event.run) snapshot.push(event.run);
          if (message.endOfInitialSet) {
            const why = at.reason;
            streamingAfter(message.revision);
            inCallback = true; // its errors are the caller's: thrown as they are
            await onResync({ reason: why, revision: message.revision, runs: snapshot.splice(0), storeId: at.storeId });
            inCallback = false;
          }
        } else {
          if (at.phase !== 'initial') streamingAfter(message.revision); // progress messages too
          else if (message.endOfInitialSet) streamingAfter(message.revision);
          else initialStarted ||= message.events.length > 0;
          yield message;
        }
        next = stream.next();
      }
      error = new RunControlError({ code: Code.Unavailable, details: 'the server ended the watch stream' });
    } catch (err) {
      if (inCallback || signal?.aborted || !(err instanceof RunControlError)) throw err;
      if (err.reason === 'REVISION_COMPACTED') {
        if (at.phase !== 'resyncing') resync('REVISION_COMPACTED'); // else keep its reason
        continue; // the server is up and answered: re-list at once
      }
      if (err.code !== Code.Unavailable) throw err;
      error = err;
    } finally {
      signal?.removeEventListener('abort', onAbort);
      controller.abort();
      await stream.return().catch(noop);
    }
    // Interrupted: UNAVAILABLE (SHUTTING_DOWN among them), or the stream ended.
    const resume = resumeRevision(error);
    if (resume !== null && (at.phase === 'fromNow' || at.phase === 'streaming')) {
      // Everything before `resume` that matched was delivered.
      streamingAfter(at.revision > resume - 1n ? at.revision : resume - 1n);
    } else if (at.phase === 'initial' && initialStarted) {
      resync('INITIAL_SET_INTERRUPTED');
    }
    inARow += 1;
    if (limit !== null && inARow > limit) throw error;
    const wait = delay;
    delay = Math.min(delay * 2, maxBackoff);
    await sleep(wait, signal);
  }
}
