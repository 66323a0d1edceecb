// The runcontrol live web view: every run, grouped by thread, kept up to date by one
// WatchRuns stream over Connect (JSON) to the server that served this page.
//
// The stream starts with `sendInitial` (the matching runs, then `endOfInitialSet`, all
// at one snapshot revision) and then carries every change. When it breaks, the page
// says "disconnected" and reconnects with backoff, resuming from the last revision it
// processed; when that cannot work (a restarted server with a new store, a compacted
// history) it starts over with a fresh snapshot.

import { Code, ConnectError, createClient, type Interceptor } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-web";
import { timestampMs } from "@bufbuild/protobuf/wkt";
import { ErrorInfoSchema } from "./gen/google/rpc/error_details_pb.js";
import { RunControl, type WatchRunsResponse } from "./gen/runcontrol/v1/run_control_pb.js";
import { CancelAction, EventType, RunStatus, type RunRecord } from "./gen/runcontrol/v1/run_pb.js";

const TOKEN_KEY = "runcontrol.token";
const STORE_ID_HEADER = "runcontrol-store-id";
// The server sends a progress message when nothing else was sent for this long (a
// resumed stream's first message, which makes the page live, may wait that long)...
const PROGRESS_SECONDS = 1n;
// ...so a stream silent for this long is dead, whatever the socket says.
const STALL_MS = 5000;
// A fresh snapshot's first message waits for the server to read every run: longer.
const SNAPSHOT_MS = 30_000;
// Reconnect delays, each with jitter (a random half to whole of it), so pages that lost
// the same server do not all come back at the same instant.
const BACKOFF_MS = [250, 500, 1000, 2000, 4000];
const ACTIVE = new Set([RunStatus.PENDING, RunStatus.RUNNING]);

function element<T extends HTMLElement>(id: string): T {
  const found = document.getElementById(id);
  if (found === null) throw new Error(`missing #${id}`);
  return found as T;
}

const ui = {
  connection: element<HTMLSpanElement>("connection"),
  revision: element<HTMLSpanElement>("revision"),
  threadFilter: element<HTMLSelectElement>("thread-filter"),
  statusFilter: element<HTMLSelectElement>("status-filter"),
  token: element<HTMLInputElement>("token"),
  notice: element<HTMLParagraphElement>("notice"),
  runs: element<HTMLTableElement>("runs"),
  empty: element<HTMLParagraphElement>("empty"),
};

// --- the server --------------------------------------------------------------------

const withToken: Interceptor = (next) => (request) => {
  const token = sessionStorage.getItem(TOKEN_KEY);
  if (token) request.header.set("authorization", `Bearer ${token}`);
  return next(request);
};

// The directory the page was served from, so the calls reach the same server behind a
// path prefix too ("https://host/runcontrol/" -> "https://host/runcontrol").
const baseUrl = new URL(".", location.href).href.replace(/\/$/, "");

const client = createClient(
  RunControl,
  createConnectTransport({ baseUrl, interceptors: [withToken] }),
);

/** "permission_denied (PERMISSION_DENIED): message", as short as the error allows. */
function describe(error: unknown): string {
  const e = ConnectError.from(error);
  const reason = e.findDetails(ErrorInfoSchema)[0]?.reason;
  const code = Code[e.code].replace(/([a-z])([A-Z])/g, "$1_$2").toLowerCase();
  return `${code}${reason && reason.toLowerCase() !== code ? ` (${reason})` : ""}: ${e.rawMessage}`;
}

// --- state ---------------------------------------------------------------------------

const runs = new Map<string, RunRecord>();
let revision = 0n; // the last revision fully processed: resume from the next one
let storeId: string | null = null; // the store `runs` came from (null: not announced)
let synced = false; // `runs` is a snapshot plus every change since: resumable
let storeChanged = false; // the resumed stream came from another store: resync now
let snapshots = 0; // streams opened for a fresh snapshot (data-snapshots, for tests)

type Connection = "connecting" | "live" | "disconnected";

function setConnection(state: Connection, detail = ""): void {
  ui.connection.dataset.state = state;
  ui.connection.textContent = detail ? `${state}: ${detail}` : state;
}

function apply(message: WatchRunsResponse, into: Map<string, RunRecord>): void {
  for (const event of message.events) {
    const run = event.run;
    if (run === undefined) continue;
    // The stream is unfiltered: DELETED means the run is gone (DeleteRun, retention).
    if (event.type === EventType.DELETED) into.delete(run.runId);
    else into.set(run.runId, run);
  }
}

// --- the live stream -----------------------------------------------------------------

let current: AbortController | null = null;
let wake: (() => void) | null = null;

/** One WatchRuns call, until it fails. `onLive` once it is serving: the snapshot is
 * complete, or a resumed stream delivered its first message. Headers alone prove
 * nothing: the server sends them before the call can still fail (the store down, a
 * watcher limit reached). */
async function watchOnce(abort: AbortController, onLive: () => void): Promise<void> {
  const resume = synced;
  const snapshot = new Map<string, RunRecord>();
  let announced: string | null = null;
  let live = false;
  if (!resume) {
    snapshots += 1;
    ui.connection.dataset.snapshots = String(snapshots);
  }
  let stall = setTimeout(() => abort.abort(new Error("stalled")), resume ? STALL_MS : SNAPSHOT_MS);
  try {
    const stream = client.watchRuns(
      resume
        ? { startRevision: revision + 1n, progressInterval: { seconds: PROGRESS_SECONDS } }
        : { sendInitial: true, progressInterval: { seconds: PROGRESS_SECONDS } },
      {
        signal: abort.signal,
        onHeader(headers) {
          announced = headers.get(STORE_ID_HEADER);
          // Only an announced, different id means another store (a restarted in-memory
          // server): its revisions are not ours. A call refused before the handler (auth,
          // a draining server, a concurrency limit) announces none: that says nothing.
          if (resume && announced !== null && storeId !== null && announced !== storeId) {
            synced = false;
            storeChanged = true;
            abort.abort(new Error("new store"));
          }
        },
      },
    );
    for await (const message of stream) {
      clearTimeout(stall);
      stall = setTimeout(() => abort.abort(new Error("stalled")), STALL_MS);
      if (!synced) {
        apply(message, snapshot);
        if (!message.endOfInitialSet) continue;
        runs.clear();
        for (const [id, run] of snapshot) runs.set(id, run);
        synced = true;
        storeId = announced;
      } else {
        apply(message, runs);
        if (announced !== null) storeId = announced;
      }
      if (!live) {
        live = true;
        onLive();
      }
      revision = message.revision;
      // A progress message moves the revision only: no redraw needed.
      if (message.events.length > 0 || message.endOfInitialSet) render();
      else ui.revision.textContent = `revision ${revision}`;
    }
  } finally {
    clearTimeout(stall);
  }
}

async function follow(): Promise<void> {
  let failures = 0;
  for (;;) {
    const abort = new AbortController();
    current = abort;
    setConnection("connecting");
    try {
      await watchOnce(abort, () => {
        failures = 0;
        setConnection("live");
      });
      throw new ConnectError("the server ended the stream", Code.Unavailable);
    } catch (error) {
      if (abort.signal.aborted && abort.signal.reason === "token") continue; // at once
      const e = ConnectError.from(abort.signal.aborted ? abort.signal.reason : error);
      const reason = e.findDetails(ErrorInfoSchema)[0]?.reason;
      // The resume point is gone: a new server's store (another id, or revisions behind
      // ours) or a history that no longer holds it. Start over from a snapshot, now.
      const resync =
        storeChanged ||
        (synced && e.code === Code.InvalidArgument) ||
        (e.code === Code.OutOfRange && reason === "REVISION_COMPACTED");
      if (resync) {
        synced = false;
        storeChanged = false;
        continue;
      }
      setConnection("disconnected", describe(e));
    }
    const base = BACKOFF_MS[Math.min(failures, BACKOFF_MS.length - 1)];
    const delay = base / 2 + Math.random() * (base / 2);
    failures += 1;
    await new Promise<void>((resolve) => {
      const timer = setTimeout(resolve, delay);
      wake = () => {
        clearTimeout(timer);
        resolve();
      };
    });
    wake = null;
  }
}

/** Reconnect now (a new token): the token may see what the last one could not. */
function reconnect(): void {
  if (wake) wake();
  else current?.abort("token");
}

// --- rendering ------------------------------------------------------------------------

const statusName = (status: RunStatus): string => RunStatus[status] ?? String(status);
const created = (run: RunRecord): number => (run.createdAt ? timestampMs(run.createdAt) : 0);

function age(run: RunRecord, now: number): string {
  let seconds = Math.max(0, Math.floor((now - created(run)) / 1000));
  const parts: string[] = [];
  for (const [unit, size] of [["d", 86400], ["h", 3600], ["m", 60]] as const) {
    if (seconds >= size || parts.length > 0) {
      parts.push(`${Math.floor(seconds / size)}${unit}`);
      seconds %= size;
    }
    if (parts.length === 2) return parts.join(" ");
  }
  parts.push(`${seconds}s`);
  return parts.slice(0, 2).join(" ");
}

function matches(run: RunRecord): boolean {
  const thread = ui.threadFilter.value;
  const status = ui.statusFilter.value;
  if (thread && run.threadId !== thread) return false;
  if (status === "ACTIVE") return ACTIVE.has(run.status);
  return !status || statusName(run.status) === status;
}

function cell(row: HTMLTableRowElement, className: string, text: string): HTMLTableCellElement {
  const td = row.insertCell();
  td.className = className;
  td.textContent = text;
  return td;
}

// Each run's row, kept while the run is unchanged (a change makes a new row): a redraw
// leaves an unchanged row where it is, so its button keeps the focus and a click on it
// is not lost to a change elsewhere.
const rows = new WeakMap<RunRecord, HTMLTableRowElement>();

function runRow(run: RunRecord, now: number): HTMLTableRowElement {
  const kept = rows.get(run);
  if (kept) return kept;
  const row = document.createElement("tr");
  rows.set(run, row);
  row.dataset.runId = run.runId;
  cell(row, "run-id", run.runId).title = run.runId;
  const status = cell(row, "status", statusName(run.status));
  status.dataset.status = statusName(run.status);
  if (run.error) status.title = run.error;
  else if (run.cancelReason) status.title = run.cancelReason;
  cell(row, "age", age(run, now)).dataset.created = String(created(run));
  cell(row, "worker", run.workerId ?? "");
  cell(row, "revision", run.modRevision.toString());
  const actions = row.insertCell();
  actions.className = "actions";
  if (ACTIVE.has(run.status)) {
    const button = document.createElement("button");
    button.type = "button";
    button.className = "cancel";
    button.textContent = "Cancel";
    button.dataset.runId = run.runId;
    actions.append(button);
  }
  return row;
}

// Each thread's rows, kept across redraws.
const threadBodies = new Map<string, HTMLTableSectionElement>();

function threadBody(thread: string): HTMLTableSectionElement {
  const kept = threadBodies.get(thread);
  if (kept) return kept;
  const body = document.createElement("tbody");
  body.dataset.threadId = thread;
  const heading = body.insertRow();
  heading.className = "thread";
  const th = document.createElement("th");
  th.colSpan = 6;
  th.scope = "rowgroup";
  heading.append(th);
  threadBodies.set(thread, body);
  return body;
}

/** Make `current` (the last children of `parent`) into `desired`, moving only what is
 * out of place: a node that stays where it was is never detached, so it keeps the
 * keyboard focus (a Cancel button) and a click in progress. */
function arrange(parent: Element, current: readonly Element[], desired: readonly Element[]): void {
  const wanted = new Set(desired);
  const placed = current.filter((node) => {
    if (wanted.has(node)) return true;
    node.remove();
    return false;
  });
  desired.forEach((node, index) => {
    if (placed[index] === node) return;
    parent.insertBefore(node, placed[index] ?? null);
    const was = placed.indexOf(node);
    if (was >= 0) placed.splice(was, 1);
    placed.splice(index, 0, node);
  });
}

let scheduled = false;

function render(): void {
  if (scheduled) return;
  scheduled = true;
  requestAnimationFrame(() => {
    scheduled = false;
    draw();
  });
}

function draw(): void {
  const now = Date.now();
  // Threads: the filter's choices, sorted, the chosen one kept even when it has no runs.
  const threads = [...new Set([...runs.values()].map((run) => run.threadId))].sort();
  const chosen = ui.threadFilter.value;
  if (chosen && !threads.includes(chosen)) threads.push(chosen);
  const options = ["", ...threads];
  const existing = [...ui.threadFilter.options].map((option) => option.value);
  if (options.join("\n") !== existing.join("\n")) {
    ui.threadFilter.replaceChildren(
      ...options.map((value) => new Option(value || "all threads", value, false, value === chosen)),
    );
  }

  const byThread = new Map<string, RunRecord[]>();
  for (const run of runs.values()) {
    if (!matches(run)) continue;
    const list = byThread.get(run.threadId) ?? [];
    list.push(run);
    byThread.set(run.threadId, list);
  }
  const bodies: HTMLTableSectionElement[] = [];
  for (const thread of [...byThread.keys()].sort()) {
    const list = byThread.get(thread) ?? [];
    // Newest first, as ListRuns orders them.
    list.sort((a, b) => created(b) - created(a) || Number(b.createRevision - a.createRevision));
    const body = threadBody(thread);
    const heading = body.rows[0];
    const active = list.filter((run) => ACTIVE.has(run.status)).length;
    const title = `${thread} — ${list.length} run${list.length === 1 ? "" : "s"}${active ? `, ${active} active` : ""}`;
    const th = heading.cells[0];
    if (th.textContent !== title) th.textContent = title;
    arrange(body, [...body.rows], [heading, ...list.map((run) => runRow(run, now))]);
    bodies.push(body);
  }
  arrange(ui.runs, [...ui.runs.tBodies], bodies);
  for (const thread of threadBodies.keys()) {
    if (!byThread.has(thread)) threadBodies.delete(thread);
  }
  ui.empty.hidden = bodies.length > 0;
  ui.revision.textContent = synced ? `revision ${revision}` : "";
}

function tick(): void {
  const now = Date.now();
  for (const td of ui.runs.querySelectorAll<HTMLTableCellElement>("td.age")) {
    const run = runs.get(td.parentElement?.dataset.runId ?? "");
    if (run) td.textContent = age(run, now);
  }
}

function notify(text: string, kind: "ok" | "error"): void {
  ui.notice.textContent = text;
  ui.notice.dataset.kind = kind;
  ui.notice.hidden = false;
}

// --- controls ---------------------------------------------------------------------------

async function cancel(runId: string, button: HTMLButtonElement): Promise<void> {
  button.disabled = true;
  try {
    const answer = await client.cancelRun({
      runId,
      action: CancelAction.INTERRUPT,
      reason: "cancelled from the web view",
    });
    const status = statusName(answer.run?.status ?? RunStatus.UNSPECIFIED);
    if (answer.cancelled) notify(`Cancelled ${runId}: ${status}`, "ok");
    else notify(`${runId} already finished: ${status}`, "ok");
  } catch (error) {
    const e = ConnectError.from(error);
    const hint =
      e.code === Code.Unauthenticated || e.code === Code.PermissionDenied
        ? " — cancelling needs an admin token"
        : "";
    notify(`Cancel of ${runId} refused: ${describe(e)}${hint}`, "error");
    button.disabled = false;
  }
}

ui.runs.addEventListener("click", (event) => {
  const target = event.target;
  if (target instanceof HTMLButtonElement && target.classList.contains("cancel")) {
    void cancel(target.dataset.runId ?? "", target);
  }
});

function saveFilters(): void {
  const params = new URLSearchParams();
  if (ui.threadFilter.value) params.set("thread", ui.threadFilter.value);
  if (ui.statusFilter.value) params.set("status", ui.statusFilter.value);
  const hash = params.toString();
  history.replaceState(null, "", hash ? `#${hash}` : location.pathname);
  draw();
}

function loadFilters(): void {
  const params = new URLSearchParams(location.hash.slice(1));
  const thread = params.get("thread") ?? "";
  if (thread) ui.threadFilter.append(new Option(thread, thread, true, true));
  ui.statusFilter.value = params.get("status") ?? "";
}

// Enter in the token field commits it (a change event); the form never submits.
element<HTMLFormElement>("controls").addEventListener("submit", (event) => event.preventDefault());
ui.threadFilter.addEventListener("change", saveFilters);
ui.statusFilter.addEventListener("change", saveFilters);
ui.token.value = sessionStorage.getItem(TOKEN_KEY) ?? "";
ui.token.addEventListener("change", () => {
  const token = ui.token.value.trim();
  if (token) sessionStorage.setItem(TOKEN_KEY, token);
  else sessionStorage.removeItem(TOKEN_KEY);
  ui.notice.hidden = true;
  reconnect();
});

loadFilters();
draw();
setInterval(tick, 1000);
void follow();
