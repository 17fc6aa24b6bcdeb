/**
 * Refused outputs: an --out that is, contains or lies inside an input by its real location (symbolic
 * links, hard links, '..', S3 prefixes written differently), existing files where a folder must go,
 * folders this user may not write and inputs it may not read (run as an unprivileged user when the
 * test runs as root), malformed options. Every command that writes is tried: denoise in memory and
 * streamed, train, watch, calibrate, noise. Inputs must stay byte-identical.
 */
import { spawnSync } from 'node:child_process';
import { existsSync, promises as fs } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { PACKAGE_ROOT } from '../../core/version.js';
import { cli, cliProcess, expectOutcome, hashAll, plantSecret } from './harness.js';
import { makeFixtures, writeOme, type Fixtures } from './fixtures.js';

let f: Fixtures;
let restoreEnv: () => void;
const root = path.join(os.tmpdir(), `blindspot-adversarial-outputs-${process.pid}`);
let input = '';
let a = '';
let vol = '';
let incoming = '';

beforeAll(async () => {
  restoreEnv = plantSecret();
  await fs.rm(root, { recursive: true, force: true });
  f = await makeFixtures(root);
  input = path.join(root, 'in');
  await fs.mkdir(input);
  a = path.join(input, 'a.tif');
  await fs.copyFile(f.tif, a);
  await fs.copyFile(f.png, path.join(input, 'b.png'));
  vol = path.join(root, 'wrap.zarr', 'vol.zarr');
  await fs.mkdir(path.dirname(vol));
  await writeOme(vol, '0.5');
  incoming = path.join(root, 'incoming');
  await fs.mkdir(incoming);
  await fs.copyFile(f.png, path.join(incoming, 'x.png'));
});

afterAll(async () => {
  restoreEnv();
  await fs.rm(root, { recursive: true, force: true });
});

const denoise = (inputs: string[], out: string, ...more: string[]): string[] => ['denoise', f.model, ...inputs, '--out', out, '--backend', 'cpu', ...more];
const at = (...parts: string[]): string => path.join(root, ...parts);

describe('outputs that are, contain or lie inside an input (real locations)', () => {
  const refused: Array<{ name: string; setup?: () => Promise<void>; args: () => string[]; mentions: () => string[]; inputs: () => string[] }> = [
    {
      name: 'denoise --out a symbolic link to the input folder, --overwrite --dtype input',
      setup: () => fs.symlink(input, at('link-to-in')),
      args: () => denoise([a, path.join(input, 'b.png')], at('link-to-in'), '--overwrite', '--dtype', 'input'),
      mentions: () => [at('link-to-in'), a],
      inputs: () => [input],
    },
    { name: 'denoise --out the input file itself (a file where the folder goes)', args: () => denoise([a], a), mentions: () => [a], inputs: () => [input] },
    {
      name: 'denoise into a folder whose output file is a symbolic link to the input, --overwrite',
      setup: async () => {
        await fs.mkdir(at('out-symlinked'));
        await fs.symlink(a, at('out-symlinked', 'a.tif'));
      },
      args: () => denoise([a], at('out-symlinked'), '--overwrite', '--dtype', 'input'),
      mentions: () => [at('out-symlinked', 'a.tif'), a],
      inputs: () => [input],
    },
    {
      name: 'denoise into a folder whose output file is a hard link to the input, --overwrite',
      setup: async () => {
        await fs.mkdir(at('out-hardlinked'));
        await fs.link(a, at('out-hardlinked', 'a.tif'));
      },
      args: () => denoise([a], at('out-hardlinked'), '--overwrite', '--dtype', 'input'),
      mentions: () => [at('out-hardlinked', 'a.tif'), a],
      inputs: () => [input],
    },
    { name: "denoise --out the input folder spelt with '..'", args: () => denoise([a], path.join(input, '..', 'in'), '--dtype', 'input', '--overwrite'), mentions: () => [a], inputs: () => [input] },
    { name: 'denoise --out through an input file', args: () => denoise([a], path.join(a, 'sub')), mentions: () => [path.join(a, 'sub')], inputs: () => [input] },
    {
      name: 'streamed --out a symbolic link to the input Zarr',
      setup: () => fs.symlink(vol, at('vol-link.zarr')),
      args: () => denoise([vol], at('vol-link.zarr')),
      mentions: () => [at('vol-link.zarr'), vol],
      inputs: () => [vol],
    },
    { name: 'streamed --out inside the input Zarr', args: () => denoise([vol], path.join(vol, 'den.zarr')), mentions: () => [path.join(vol, 'den.zarr')], inputs: () => [vol] },
    { name: 'streamed --out containing the input Zarr', args: () => denoise([vol], at('wrap.zarr')), mentions: () => [at('wrap.zarr')], inputs: () => [vol] },
    {
      name: "streamed --out the input through a linked parent folder",
      setup: () => fs.symlink(path.dirname(vol), at('linked-parent')),
      args: () => denoise([vol], path.join(at('linked-parent'), 'vol.zarr')),
      mentions: () => [vol],
      inputs: () => [vol],
    },
    { name: 'streamed --out the same S3 prefix written with extra slashes', args: () => denoise(['s3://lab/raw/vol.zarr'], 's3://lab//raw/vol.zarr/'), mentions: () => ['s3://lab//raw/vol.zarr/'], inputs: () => [] },
    { name: 'streamed --out inside the S3 input', args: () => denoise(['s3://lab/raw/vol.zarr'], 's3://lab/raw/vol.zarr/den.zarr'), mentions: () => ['s3://lab/raw/vol.zarr/den.zarr'], inputs: () => [] },
    { name: 'streamed --out containing the S3 input', args: () => denoise(['s3://lab/raw/vol.zarr'], 's3://lab/raw'), mentions: () => ['s3://lab/raw', 's3://lab/raw/vol.zarr'], inputs: () => [] },
    { name: 'watch --out inside the watched folder', args: () => ['watch', incoming, '--model', f.model, '--out', path.join(incoming, 'denoised'), '--once', '--backend', 'cpu'], mentions: () => [path.join(incoming, 'denoised')], inputs: () => [incoming] },
    {
      name: 'watch --out a symbolic link to the watched folder',
      setup: () => fs.symlink(incoming, at('incoming-link')),
      args: () => ['watch', incoming, '--model', f.model, '--out', at('incoming-link'), '--once', '--backend', 'cpu'],
      mentions: () => [at('incoming-link')],
      inputs: () => [incoming],
    },
    { name: 'watch --out inside the watched S3 prefix', args: () => ['watch', 's3://lab/incoming', '--model', f.model, '--out', 's3://lab/incoming/den', '--once', '--backend', 'cpu'], mentions: () => ['s3://lab/incoming/den'], inputs: () => [] },
    {
      name: 'train --out an existing file (refused before training)',
      setup: () => fs.writeFile(at('model-is-a-file'), 'x'),
      args: () => ['train', a, '--out', at('model-is-a-file'), '--steps', '50', '--patch', '16x16', '--backend', 'cpu'],
      mentions: () => [at('model-is-a-file')],
      inputs: () => [input, at('model-is-a-file')],
    },
    { name: 'train --out inside the input Zarr', args: () => ['train', vol, '--out', path.join(vol, 'model'), '--steps', '1', '--patch', '16x16', '--backend', 'cpu'], mentions: () => [path.join(vol, 'model')], inputs: () => [vol] },
    {
      name: 'train --out a symbolic link to the input file',
      setup: () => fs.symlink(a, at('model-link')),
      args: () => ['train', a, '--out', at('model-link'), '--steps', '1', '--patch', '16x16', '--backend', 'cpu'],
      mentions: () => [at('model-link')],
      inputs: () => [input],
    },
    { name: 'calibrate --out the input', args: () => ['calibrate', a, '--denoiser', 'median', '--out', a, '--overwrite'], mentions: () => [a], inputs: () => [input] },
    {
      name: 'calibrate --out a symbolic link to the input',
      setup: () => fs.symlink(a, at('cal-link.tif')),
      args: () => ['calibrate', a, '--denoiser', 'median', '--out', at('cal-link.tif'), '--overwrite'],
      mentions: () => [at('cal-link.tif')],
      inputs: () => [input],
    },
    { name: 'noise --calibrate --out the stack', args: () => ['noise', '--calibrate', f.stack, '--out', f.stack], mentions: () => [f.stack], inputs: () => [f.stack] },
    { name: 'noise --plot-dir through an input file', args: () => ['noise', a, '--plot-dir', path.join(a, 'plots')], mentions: () => [path.join(a, 'plots')], inputs: () => [input] },
  ];
  for (const c of refused) {
    test(`${c.name}: exit 4, input unchanged`, async () => {
      await c.setup?.();
      const inputs = await hashAll(c.inputs());
      const r = await cli(c.args());
      await expectOutcome(r, { code: 4, mentions: c.mentions(), inputs, maxMs: 10_000 });
    });
  }
  test('denoise into the input folder with other names is allowed (PNG -> .tif), and the input stays', async () => {
    const dir = at('same-folder');
    await fs.mkdir(dir);
    await fs.copyFile(f.png, path.join(dir, 'p.png'));
    const inputs = await hashAll([path.join(dir, 'p.png')]);
    const r = await cli(denoise([path.join(dir, 'p.png')], dir));
    await expectOutcome(r, { code: 0, inputs });
    expect(existsSync(path.join(dir, 'p.tif'))).toBe(true);
  });
});

describe('malformed options are usage errors naming the option', () => {
  const usage: Array<{ name: string; args: string[]; env?: Record<string, string>; mentions: string[] }> = [
    { name: 'denoise --s3-endpoint not a URL', args: ['denoise', 'MODEL', 's3://lab/raw/vol.zarr', '--out', 's3://lab/den.zarr', '--s3-endpoint', 'not a url', '--backend', 'cpu'], mentions: ['--s3-endpoint', 'not a url'] },
    { name: 'denoise BLINDSPOT_S3_ENDPOINT ftp://', args: ['denoise', 'MODEL', 's3://lab/raw/vol.zarr', '--out', 's3://lab/den.zarr', '--backend', 'cpu'], env: { BLINDSPOT_S3_ENDPOINT: 'ftp://example' }, mentions: ['BLINDSPOT_S3_ENDPOINT'] },
    { name: 'train --s3-endpoint ::', args: ['train', 's3://lab/raw/vol.zarr', '--out', 'OUT', '--s3-endpoint', '::', '--backend', 'cpu'], mentions: ['--s3-endpoint'] },
    { name: 'plan --s3-endpoint without a scheme', args: ['plan', 's3://lab/raw/vol.zarr', '--model', 'MODEL', '--s3-endpoint', '127.0.0.1:9000', '--no-measure', '--backend', 'cpu'], mentions: ['--s3-endpoint'] },
    { name: 'watch --s3-endpoint garbage', args: ['watch', 's3://lab/incoming', '--model', 'MODEL', '--out', 's3://lab/out', '--s3-endpoint', 'http//x', '--once', '--backend', 'cpu'], mentions: ['--s3-endpoint'] },
    { name: 'BLINDSPOT_S3_REQUEST_TIMEOUT_MS not a number', args: ['denoise', 'MODEL', 's3://lab/raw/vol.zarr', '--out', 's3://lab/den.zarr', '--s3-endpoint', 'http://127.0.0.1:9', '--backend', 'cpu'], env: { BLINDSPOT_S3_REQUEST_TIMEOUT_MS: 'soon' }, mentions: ['BLINDSPOT_S3_REQUEST_TIMEOUT_MS'] },
    { name: 'an unknown option', args: ['denoise', 'MODEL', 'x.png', '--out', 'o', '--frobnicate'], mentions: ['frobnicate'] },
    { name: 'an unknown command', args: ['denoize'], mentions: ['denoize'] },
  ];
  for (const c of usage) {
    test(`${c.name}: exit 2`, async () => {
      const args = c.args.map((x) => (x === 'MODEL' ? f.model : x === 'OUT' ? at('usage-out') : x));
      const r = await cli(args, c.env);
      await expectOutcome(r, { code: 2, mentions: c.mentions, maxMs: 10_000 });
    });
  }
  for (const [name, command] of [
    ['train', (chunks: string) => ['train', chunks, '--out', at('mm-model'), '--max-memory', '1KiB', '--patch', '16x16', '--steps', '1', '--backend', 'cpu']],
    ['denoise', (chunks: string) => ['denoise', f.model, chunks, '--out', at('mm-out.zarr'), '--max-memory', '1KiB', '--backend', 'cpu']],
  ] as const) {
    test(`${name} --max-memory 1KiB: a usage error whose figures are never negative`, async () => {
      const r = await cli(command(f.zarr3));
      await expectOutcome(r, { code: 2, mentions: ['--max-memory'] });
      expect(r.stderr).not.toMatch(/-\d/);
    });
  }
});

// Permissions: root may write anywhere, so these run the built CLI as 'nobody'.
const asRoot = typeof process.getuid === 'function' && process.getuid() === 0;
const runuser = asRoot && spawnSync('runuser', ['-u', 'nobody', '--', 'true']).status === 0;
const built = existsSync(path.join(PACKAGE_ROOT, 'dist', 'cli', 'main.js'));
const permissionsSkip = !asRoot ? 'not root: permission cases run as this user' : !runuser ? "runuser -u nobody is not available" : !built ? 'dist/ is not built (npm test builds it)' : '';
if (permissionsSkip && asRoot) console.log(`adversarial permissions: skipped: ${permissionsSkip}`);

describe.skipIf(asRoot && permissionsSkip !== '')('permissions (as an unprivileged user when run as root)', () => {
  const user = asRoot ? 'nobody' : undefined;
  beforeAll(async () => {
    // The unprivileged user must reach the fixtures: the temp root and the model are world-readable.
    await fs.chmod(root, 0o755);
    await fs.mkdir(at('locked'), { mode: 0o755 });
    await fs.chmod(at('locked'), 0o555);
    await fs.copyFile(f.png, at('secret.png'));
    await fs.chmod(at('secret.png'), 0o000);
    await fs.mkdir(at('closed'));
    await fs.copyFile(f.png, at('closed', 'c.png'));
    await fs.chmod(at('closed'), 0o700);
    await fs.mkdir(at('open'));
    await fs.chmod(at('open'), 0o777);
  });
  const run = (args: string[]) => cliProcess(args, { asUser: user, timeoutMs: 60_000, env: { BLINDSPOT_DEBUG: '' } });
  test('denoise --out inside a folder it may not write: exit 4 naming it', async () => {
    const inputs = await hashAll([f.png]);
    const r = await run(['denoise', f.model, f.png, '--out', at('locked', 'out'), '--backend', 'cpu']);
    await expectOutcome(r, { code: 4, mentions: [at('locked', 'out')], inputs, outputs: [at('locked')], maxMs: 60_000 });
  });
  test('denoise an input it may not read: exit 3 naming it', async () => {
    const r = await run(['denoise', f.model, at('secret.png'), '--out', at('open', 'perm-out-1'), '--backend', 'cpu']);
    await expectOutcome(r, { code: 3, mentions: [at('secret.png')], outputs: [at('open', 'perm-out-1')], maxMs: 60_000 });
  });
  test('noise on a folder it may not list: exit 3 naming it', async () => {
    const r = await run(['noise', at('closed')]);
    await expectOutcome(r, { code: 3, mentions: [at('closed')], maxMs: 60_000 });
  });
  test('train --out inside a folder it may not write: exit 4 before training', async () => {
    const r = await run(['train', f.png, '--out', at('locked', 'model'), '--steps', '200', '--patch', '16x16', '--backend', 'cpu']);
    await expectOutcome(r, { code: 4, mentions: [at('locked', 'model')], maxMs: 60_000 });
  });
  test('streamed denoise --out inside a folder it may not write: exit 4', async () => {
    const inputs = await hashAll([f.zarr3]);
    const r = await run(['denoise', f.model, f.zarr3, '--out', at('locked', 'o.zarr'), '--backend', 'cpu', '--max-memory', '256MiB']);
    await expectOutcome(r, { code: 4, mentions: [at('locked', 'o.zarr')], inputs, maxMs: 60_000 });
  });
});
