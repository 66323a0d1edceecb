// The npm package is self-contained and typed: it ships the compiled client (dist/)
// with the code generated from the contract (dist/gen, an unchanged copy of src/gen,
// which `make proto` writes and `make proto-check` checks), no .proto files (nothing
// is loaded at run time), and its type declarations. A project outside this
// repository that installs the packed tarball imports it (ESM) or requires it
// (CommonJS), and TypeScript sees the generated messages and enums through it.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';

const PACKAGE_DIR = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const NPM = process.platform === 'win32' ? 'npm.cmd' : 'npm';

/** Every file under `dir`, relative to it, sorted. @param {string} dir @returns {string[]} */
function filesUnder(dir) {
  return fs
    .readdirSync(dir, { recursive: true, withFileTypes: true })
    .filter((entry) => entry.isFile())
    .map((entry) => path.relative(dir, path.join(entry.parentPath ?? entry.path, entry.name)))
    .sort();
}

/**
 * Pack the package into a fresh temporary directory: offline, and without running
 * `prepare` (the tests run against the dist/ that `npm test` built; rebuilding it here
 * would race the other test files).
 */
function pack() {
  const dir = fs.realpathSync(fs.mkdtempSync(path.join(os.tmpdir(), 'runcontrol-node-pack-')));
  const out = execFileSync(NPM, ['pack', '--json', '--offline', '--ignore-scripts', '--pack-destination', dir], {
    cwd: PACKAGE_DIR,
    encoding: 'utf8',
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  const [info] = JSON.parse(out);
  /** @type {string[]} */
  const files = info.files.map((/** @type {{ path: string }} */ f) => f.path).sort();
  return { dir, tarball: path.join(dir, info.filename), files };
}

test('dist/gen is the generated code, unchanged', () => {
  const generated = filesUnder(path.join(PACKAGE_DIR, 'src', 'gen'));
  assert.ok(generated.includes(path.join('runcontrol', 'v1', 'run_control_pb.js')), generated.join(', '));
  assert.ok(generated.includes(path.join('google', 'rpc', 'error_details_pb.d.ts')), generated.join(', '));
  assert.deepEqual(filesUnder(path.join(PACKAGE_DIR, 'dist', 'gen')), generated);
  for (const name of generated) {
    const copy = fs.readFileSync(path.join(PACKAGE_DIR, 'dist', 'gen', name), 'utf8');
    assert.equal(copy, fs.readFileSync(path.join(PACKAGE_DIR, 'src', 'gen', name), 'utf8'), `${name}: rebuild (npm run build)`);
  }
});

test('the packed package ships dist/ with the generated code and works outside the repository', () => {
  const { dir, tarball, files } = pack();
  try {
    for (const name of filesUnder(path.join(PACKAGE_DIR, 'src', 'gen'))) {
      assert.ok(files.includes(`dist/gen/${name.split(path.sep).join('/')}`), `${name} not packed: ${files.join(', ')}`);
    }
    for (const name of ['dist/index.js', 'dist/index.d.ts', 'dist/auth.js', 'dist/json.js', 'package.json', 'README.md']) {
      assert.ok(files.includes(name), `${name} not packed: ${files.join(', ')}`);
    }
    assert.ok(!files.some((f) => f.endsWith('.proto')), `no .proto is loaded at run time: ${files.join(', ')}`);
    assert.ok(!files.some((f) => /^(src|test|support)\//.test(f)), files.join(', '));

    // Install the tarball as a project outside this repository would: its own
    // node_modules, the dependencies linked from this package's (no network).
    const project = path.join(dir, 'project');
    const modules = path.join(project, 'node_modules');
    const installed = path.join(modules, '@runcontrol', 'client');
    fs.mkdirSync(installed, { recursive: true });
    execFileSync('tar', ['-xzf', tarball, '-C', installed, '--strip-components=1']);
    const manifest = JSON.parse(fs.readFileSync(path.join(installed, 'package.json'), 'utf8'));
    assert.deepEqual(Object.keys(manifest.dependencies).sort(), [
      '@bufbuild/protobuf',
      '@connectrpc/connect',
      '@connectrpc/connect-node',
    ]);
    for (const scope of ['@bufbuild', '@connectrpc', '@types']) {
      fs.symlinkSync(path.join(PACKAGE_DIR, 'node_modules', scope), path.join(modules, scope), 'dir');
    }
    fs.writeFileSync(path.join(project, 'package.json'), JSON.stringify({ name: 'consumer', private: true }));

    // CommonJS (require of the ES module package) and ESM, both transports.
    const cjs = `
      const rc = require('@runcontrol/client');
      for (const transport of ['grpc', 'connect']) new rc.RunControlClient('127.0.0.1:1', { transport }).close();
      console.log(JSON.stringify({ main: require.resolve('@runcontrol/client'), running: rc.RunStatus.RUNNING,
        schema: rc.RunRecordSchema.typeName, service: rc.RunControl.typeName }));
    `;
    const fromCjs = JSON.parse(execFileSync(process.execPath, ['-e', cjs], { cwd: project, encoding: 'utf8' }));
    assert.deepEqual(fromCjs, {
      main: path.join(installed, 'dist', 'index.js'),
      running: 2,
      schema: 'runcontrol.v1.RunRecord',
      service: 'runcontrol.v1.RunControl',
    });
    const esm = `
      import { RunControlClient, RunStatus } from '@runcontrol/client';
      import { EventType } from '@runcontrol/client/gen/runcontrol/v1/run_pb.js';
      new RunControlClient('127.0.0.1:1', { transport: 'connect' }).close();
      console.log(JSON.stringify([RunStatus[2], EventType[1], import.meta.resolve('@runcontrol/client')]));
    `;
    const fromEsm = execFileSync(process.execPath, ['--input-type=module', '-e', esm], { cwd: project, encoding: 'utf8' });
    assert.deepEqual(JSON.parse(fromEsm), ['RUNNING', 'ADDED', `file://${path.join(installed, 'dist', 'index.js')}`]);

    // TypeScript sees the generated types through the package: messages, enums, bigint.
    fs.writeFileSync(
      path.join(project, 'consumer.ts'),
      `
      import { RunControlClient, RunStatus, RunControlError, type RunRecord, type WatchRunsResponse } from '@runcontrol/client';

      export async function main(client: RunControlClient): Promise<bigint> {
        const { run } = await client.createRun({ threadId: 't', metadataJson: '{}' });
        const record: RunRecord | undefined = run;
        const status: RunStatus = record?.status ?? RunStatus.UNSPECIFIED;
        // @ts-expect-error snake_case is not a field: the request type is the generated one
        await client.getRun({ run_id: 'r' });
        // @ts-expect-error a revision is a bigint, not a string
        await client.deleteRun({ runId: 'r', expectedModRevision: '7' });
        for await (const message of client.watchRuns({ threadId: 't', startRevision: 1n })) {
          const typed: WatchRunsResponse = message;
          if (typed.events.length > 0) break;
        }
        try {
          await client.hasInflight({ threadId: 't' });
        } catch (err) {
          if (err instanceof RunControlError && err.reason === 'THREAD_BUSY') return 0n;
        }
        return (record?.modRevision ?? 0n) + BigInt(status);
      }
      `,
    );
    fs.writeFileSync(
      path.join(project, 'tsconfig.json'),
      JSON.stringify({
        compilerOptions: { strict: true, noEmit: true, module: 'NodeNext', moduleResolution: 'NodeNext', target: 'ES2022', lib: ['ES2022', 'DOM', 'DOM.Iterable'], types: ['node'] },
        files: ['consumer.ts'],
      }),
    );
    const tsc = path.join(PACKAGE_DIR, 'node_modules', 'typescript', 'bin', 'tsc');
    try {
      execFileSync(process.execPath, [tsc, '-p', project], { cwd: project, encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
    } catch (err) {
      assert.fail(`the consumer does not type-check:\n${/** @type {any} */ (err).stdout}${/** @type {any} */ (err).stderr}`);
    }
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});
