/**
 * Test support (kept outside test/ so `node --test test/` does not run it as a
 * test file): start the real Python runcontrol server as a subprocess on free
 * 127.0.0.1 ports, its gRPC port and its HTTP (Connect) listener, and stop it
 * with SIGTERM.
 *
 * Python: $RUNCONTROL_PYTHON, or ../../.venv/bin/python relative to this package
 * (the HTTP listener needs the server's `http` extra, part of the dev install).
 */
import { spawn } from 'node:child_process';
import * as path from 'node:path';
import * as readline from 'node:readline';
import { fileURLToPath } from 'node:url';

const PACKAGE_DIR = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
export const REPO_ROOT = path.resolve(PACKAGE_DIR, '..', '..');
export const PYTHON = process.env.RUNCONTROL_PYTHON || path.resolve(REPO_ROOT, '.venv', 'bin', 'python');
const STDERR_KEEP = 16 * 1024;
// The server logs its HTTP listener's bound address (stdout has only the gRPC one):
// "serving runcontrol.v1.RunControl over Connect and gRPC-Web on http://127.0.0.1:PORT".
const HTTP_LINE = /over Connect and gRPC-Web on (https?):\/\/(\S+)/;

/** The transports every suite runs over: the same tests, each against its own port. */
export const TRANSPORTS = /** @type {const} */ (['grpc', 'connect']);

/**
 * @typedef {{ address: string, httpAddress: string, pid: number, stderr: () => string,
 *   addressFor: (transport: 'grpc' | 'connect') => string,
 *   stop: (timeoutMs?: number) => Promise<{ code: number | null, signal: NodeJS.Signals | null }> }} Server
 */

/**
 * @param {{ startTimeoutMs?: number, args?: string[] }} [options]
 * @returns {Promise<Server>}
 */
export function startServer({ startTimeoutMs = 20_000, args = [] } = {}) {
  const argv = ['-m', 'runcontrol_server', '--listen', '127.0.0.1:0', '--http-listen', '127.0.0.1:0', ...args];
  const child = spawn(PYTHON, argv, {
    cwd: REPO_ROOT,
    env: { ...process.env, PYTHONUNBUFFERED: '1' },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let stderr = '';
  /** @type {(address: string) => void} */
  let httpFound = () => {};
  /** @type {Promise<string>} the HTTP listener's "HOST:PORT", once logged */
  const httpAddress = new Promise((resolve) => {
    httpFound = resolve;
  });
  child.stderr.setEncoding('utf8');
  child.stderr.on('data', (chunk) => {
    stderr = (stderr + chunk).slice(-STDERR_KEEP);
    const match = HTTP_LINE.exec(stderr);
    if (match) httpFound(match[2]);
  });
  /** @type {Promise<{ code: number | null, signal: NodeJS.Signals | null }>} */
  const exited = new Promise((resolve) => {
    child.once('exit', (code, signal) => resolve({ code, signal }));
  });

  /** Signal the server by its pid while it is running. @param {NodeJS.Signals} sig */
  const signalServer = (sig) => {
    if (child.pid !== undefined && child.exitCode === null && child.signalCode === null) process.kill(child.pid, sig);
  };

  const stop = async (timeoutMs = 15_000) => {
    signalServer('SIGTERM');
    let timer;
    const timeout = new Promise((_, reject) => {
      timer = setTimeout(() => {
        signalServer('SIGKILL');
        reject(new Error(`server pid ${child.pid} did not exit within ${timeoutMs} ms of SIGTERM\n${stderr}`));
      }, timeoutMs);
    });
    try {
      return await Promise.race([exited, timeout]);
    } finally {
      clearTimeout(timer);
    }
  };

  return new Promise((resolve, reject) => {
    const lines = readline.createInterface({ input: child.stdout });
    let settled = false;
    const fail = (/** @type {Error} */ err) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      lines.close();
      signalServer('SIGKILL');
      reject(err);
    };
    const timer = setTimeout(
      () => fail(new Error(`no "listening on" line from ${PYTHON} within ${startTimeoutMs} ms\n${stderr}`)),
      startTimeoutMs,
    );
    child.once('error', (err) => fail(new Error(`cannot start ${PYTHON}: ${err.message}`)));
    exited.then(({ code, signal }) =>
      fail(new Error(`server exited before listening (code ${code}, signal ${signal})\n${stderr}`)),
    );
    lines.once('line', (line) => {
      const match = /^listening on (\S+)$/.exec(line.trim());
      if (!match) {
        fail(new Error(`unexpected first stdout line: ${JSON.stringify(line)}`));
        return;
      }
      // Keep draining stdout so the server never blocks on a full pipe.
      lines.on('line', () => {});
      // The HTTP line is logged before the "listening on" one is printed, but the two
      // pipes are read independently: wait for it too.
      httpAddress.then((http) => {
        if (settled) return;
        settled = true;
        clearTimeout(timer);
        const address = match[1];
        resolve({
          address,
          httpAddress: http,
          addressFor: (transport) => (transport === 'grpc' ? address : http),
          pid: /** @type {number} */ (child.pid),
          stderr: () => stderr,
          stop,
        });
      });
    });
  });
}
