'use strict';
/**
 * Test support (kept outside test/ so `node --test test/` does not run it as a
 * test file): start the real Python runcontrol server as a subprocess on a free
 * 127.0.0.1 port and stop it with SIGTERM.
 *
 * Python: $RUNCONTROL_PYTHON, or ../../.venv/bin/python relative to this package.
 */
const { spawn } = require('node:child_process');
const path = require('node:path');
const readline = require('node:readline');

const PACKAGE_DIR = path.resolve(__dirname, '..');
const REPO_ROOT = path.resolve(PACKAGE_DIR, '..', '..');
const PYTHON = process.env.RUNCONTROL_PYTHON || path.resolve(PACKAGE_DIR, '..', '..', '.venv', 'bin', 'python');
const STDERR_KEEP = 16 * 1024;

/**
 * @param {{ startTimeoutMs?: number, args?: string[] }} [options]
 * @returns {Promise<{ address: string, pid: number, stderr: () => string,
 *   stop: (timeoutMs?: number) => Promise<{ code: number | null, signal: NodeJS.Signals | null }> }>}
 */
function startServer({ startTimeoutMs = 20_000, args = [] } = {}) {
  const child = spawn(PYTHON, ['-m', 'runcontrol_server', '--listen', '127.0.0.1:0', ...args], {
    cwd: REPO_ROOT,
    env: { ...process.env, PYTHONUNBUFFERED: '1' },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let stderr = '';
  child.stderr.setEncoding('utf8');
  child.stderr.on('data', (chunk) => {
    stderr = (stderr + chunk).slice(-STDERR_KEEP);
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
      settled = true;
      clearTimeout(timer);
      // Keep draining stdout so the server never blocks on a full pipe.
      lines.on('line', () => {});
      resolve({ address: match[1], pid: /** @type {number} */ (child.pid), stderr: () => stderr, stop });
    });
  });
}

module.exports = { startServer, PYTHON, REPO_ROOT };
