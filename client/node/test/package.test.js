'use strict';
// The npm package is self-contained: it ships the .proto files the client loads at
// run time (proto/, a copy of the repository's protos/ that `make proto` keeps in
// sync), and a client installed from the packed tarball, outside this repository,
// loads them from itself.
const { test } = require('node:test');
const assert = require('node:assert/strict');
const { execFileSync } = require('node:child_process');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');

const PACKAGE_DIR = path.resolve(__dirname, '..');
const REPO_PROTOS = path.resolve(PACKAGE_DIR, '..', '..', 'protos', 'runcontrol', 'v1');
const PACKAGE_PROTOS = path.join(PACKAGE_DIR, 'proto', 'runcontrol', 'v1');
const NPM = process.platform === 'win32' ? 'npm.cmd' : 'npm';

/** @param {string} dir */
const protoFiles = (dir) => fs.readdirSync(dir).filter((name) => name.endsWith('.proto')).sort();

/** Pack the package into a fresh temporary directory (offline); returns the tarball's path and files. */
function pack() {
  const dir = fs.realpathSync(fs.mkdtempSync(path.join(os.tmpdir(), 'runcontrol-node-pack-')));
  const out = execFileSync(NPM, ['pack', '--json', '--offline', '--pack-destination', dir], {
    cwd: PACKAGE_DIR,
    encoding: 'utf8',
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  const [info] = JSON.parse(out);
  return {
    dir,
    tarball: path.join(dir, info.filename),
    files: info.files.map((/** @type {{ path: string }} */ f) => f.path).sort(),
  };
}

test('proto/ is the same contract as the repository protos/ (run make proto)', () => {
  const names = protoFiles(REPO_PROTOS);
  assert.ok(names.includes('run_control.proto'), names.join(', '));
  assert.deepEqual(protoFiles(PACKAGE_PROTOS), names);
  for (const name of names) {
    const copy = fs.readFileSync(path.join(PACKAGE_PROTOS, name), 'utf8');
    assert.equal(copy, fs.readFileSync(path.join(REPO_PROTOS, name), 'utf8'), `${name} drifted`);
  }
});

test('the packed package ships the protos and loads them from itself', () => {
  const { dir, tarball, files } = pack();
  try {
    for (const name of protoFiles(REPO_PROTOS)) {
      assert.ok(files.includes(`proto/runcontrol/v1/${name}`), `${name} not packed: ${files.join(', ')}`);
    }
    assert.ok(files.includes('src/index.js') && files.includes('src/index.d.ts'), files.join(', '));
    assert.ok(!files.some((f) => f.startsWith('test/') || f.startsWith('support/')), files.join(', '));

    // Install the tarball as a project outside this repository would: its own
    // node_modules, the dependencies found through NODE_PATH (no network).
    const installed = path.join(dir, 'project', 'node_modules', '@runcontrol', 'client');
    fs.mkdirSync(installed, { recursive: true });
    execFileSync('tar', ['-xzf', tarball, '-C', installed, '--strip-components=1']);
    const script = `
      const rc = require('@runcontrol/client');
      const client = new rc.RunControlClient('127.0.0.1:1'); // loads run_control.proto
      client.close();
      console.log(JSON.stringify({ main: require.resolve('@runcontrol/client'), root: rc.PROTO_ROOT }));
    `;
    const out = execFileSync(process.execPath, ['-e', script], {
      cwd: path.join(dir, 'project'),
      env: { ...process.env, NODE_PATH: path.join(PACKAGE_DIR, 'node_modules') },
      encoding: 'utf8',
    });
    const { main, root } = JSON.parse(out);
    assert.equal(main, path.join(installed, 'src', 'index.js'));
    assert.equal(root, path.join(installed, 'proto'));
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});
