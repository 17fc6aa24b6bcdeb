/**
 * Adversarial image files (PNG, TIFF and BigTIFF, FITS, npy): truncated, lying headers, corrupt
 * bytes, absurd sizes, each through every command that reads images (denoise in memory, train,
 * noise, calibrate, eval). Each must exit 3 naming the file, quickly, with no stack trace, no
 * output that looks complete, the input unchanged and the planted secret never printed.
 */
import { promises as fs } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import zlib from 'node:zlib';
import { afterAll, beforeAll, describe, test } from 'vitest';
import { cli, expectOutcome, hashAll, plantSecret } from './harness.js';
import { fitsWithCard, fitsWithoutEnd, garbage, makeFixtures, npyWith, pngWithIdat, pngWithSize, tiffWithTag, truncate, type Fixtures } from './fixtures.js';

let f: Fixtures;
let restoreEnv: () => void;
const root = path.join(os.tmpdir(), `blindspot-adversarial-images-${process.pid}`);

interface BadImage {
  name: string;
  ext: string;
  make: (good: Record<string, Uint8Array>) => Uint8Array | Promise<Uint8Array>;
  /** What the message must say besides the file name. */
  says?: RegExp;
}

const BIGTIFF_HEADER = [0x49, 0x49, 0x2b, 0x00, 0x08, 0x00, 0x00, 0x00];

const cases: BadImage[] = [
  { name: 'png-truncated', ext: 'png', make: (g) => truncate(g.png, 0.6) },
  { name: 'png-bad-crc', ext: 'png', make: (g) => { const b = g.png.slice(); b[b.length - 20] ^= 0xff; return b; }, says: /CRC|corrupt/ },
  { name: 'png-header-100000x100000', ext: 'png', make: (g) => pngWithSize(g.png, 100_000, 100_000), says: /100000x100000/ },
  { name: 'png-zero-width', ext: 'png', make: (g) => pngWithSize(g.png, 0, 32), says: /zero/ },
  { name: 'png-empty', ext: 'png', make: () => new Uint8Array(0), says: /empty/ },
  { name: 'png-garbage', ext: 'png', make: () => garbage(500, 1) },
  { name: 'png-idat-not-zlib', ext: 'png', make: (g) => pngWithIdat(g.png, garbage(200, 2)), says: /corrupt/ },
  { name: 'png-idat-too-short', ext: 'png', make: (g) => pngWithIdat(g.png, zlib.deflateSync(Buffer.alloc(40))), says: /truncated|shorter|needs/ },
  { name: 'png-header-larger-than-data', ext: 'png', make: (g) => pngWithSize(g.png, 32, 3000), says: /truncated|shorter|needs/ },
  { name: 'tif-truncated', ext: 'tif', make: (g) => truncate(g.tif, 0.5) },
  { name: 'tif-zero-width', ext: 'tif', make: (g) => tiffWithTag(g.tif, 256, 0), says: /zero|width/ },
  { name: 'tif-header-100000x100000', ext: 'tif', make: (g) => tiffWithTag(tiffWithTag(g.tif, 256, 100_000), 257, 100_000) },
  { name: 'tif-garbage', ext: 'tif', make: () => garbage(400, 3, [0x49, 0x49, 0x2a, 0x00]) },
  { name: 'tif-ifd-past-end', ext: 'tif', make: (g) => { const b = g.tif.slice(); new DataView(b.buffer).setUint32(4, 0x7fffffff, true); return b; } },
  { name: 'tif-bits-12', ext: 'tif', make: (g) => tiffWithTag(g.tif, 258, 12), says: /12-bit|sample type|readable/ },
  { name: 'bigtiff-header-only', ext: 'tif', make: () => Uint8Array.from([...BIGTIFF_HEADER, 16, 0, 0, 0, 0, 0, 0, 0]) },
  { name: 'bigtiff-ifd-past-end', ext: 'tif', make: () => Uint8Array.from([...BIGTIFF_HEADER, 0xff, 0xff, 0xff, 0x0f, 0, 0, 0, 0, ...new Array(32).fill(0)]) },
  { name: 'fits-truncated-data', ext: 'fits', make: (g) => g.fits.subarray(0, g.fits.length - 2880), says: /truncated/ },
  { name: 'fits-no-end-card', ext: 'fits', make: (g) => fitsWithoutEnd(g.fits), says: /END/ },
  { name: 'fits-bitpix-7', ext: 'fits', make: (g) => fitsWithCard(g.fits, 'BITPIX', '7'), says: /BITPIX/ },
  { name: 'fits-naxis-100000', ext: 'fits', make: (g) => fitsWithCard(fitsWithCard(g.fits, 'NAXIS1', '100000'), 'NAXIS2', '100000'), says: /truncated|promises/ },
  { name: 'fits-naxis-zero', ext: 'fits', make: (g) => fitsWithCard(g.fits, 'NAXIS1', '0'), says: /axis/ },
  { name: 'fits-gzip-truncated', ext: 'fits.gz', make: (g) => truncate(zlib.gzipSync(g.fits), 0.5), says: /gzip|truncated/ },
  { name: 'npy-truncated-header', ext: 'npy', make: (g) => g.npy.subarray(0, 20), says: /truncated/ },
  { name: 'npy-complex64', ext: 'npy', make: () => npyWith("{'descr': '<c8', 'fortran_order': False, 'shape': (4, 4), }", new Uint8Array(128)), says: /c8|dtype/ },
  { name: 'npy-shape-100000x100000', ext: 'npy', make: () => npyWith("{'descr': '<f4', 'fortran_order': False, 'shape': (100000, 100000), }", new Uint8Array(64)) },
  { name: 'npy-negative-shape', ext: 'npy', make: () => npyWith("{'descr': '<f4', 'fortran_order': False, 'shape': (-4, 4), }", new Uint8Array(64)) },
  { name: 'npy-garbage', ext: 'npy', make: () => garbage(300, 4) },
];

const paths: Record<string, string> = {};

beforeAll(async () => {
  restoreEnv = plantSecret();
  await fs.rm(root, { recursive: true, force: true });
  f = await makeFixtures(root);
  const read = async (p: string): Promise<Uint8Array> => new Uint8Array(await fs.readFile(p));
  const good = { png: await read(f.png), tif: await read(f.tif), fits: await read(f.fits), npy: await read(f.npy) };
  for (const c of cases) {
    const dir = path.join(root, 'cases', c.name);
    await fs.mkdir(dir, { recursive: true });
    paths[c.name] = path.join(dir, `bad.${c.ext}`);
    await fs.writeFile(paths[c.name], await c.make(good));
  }
});

afterAll(async () => {
  restoreEnv();
  await fs.rm(root, { recursive: true, force: true });
});

const commands: Array<{ name: string; args: (bad: string, out: string) => string[] }> = [
  { name: 'denoise', args: (bad, out) => ['denoise', f.model, bad, '--out', out, '--backend', 'cpu'] },
  { name: 'train', args: (bad, out) => ['train', bad, '--out', out, '--steps', '1', '--patch', '16x16', '--batch-size', '2', '--backend', 'cpu'] },
  { name: 'noise', args: (bad, out) => ['noise', bad, '--plot-dir', out, '--workers', '1'] },
  { name: 'calibrate', args: (bad, out) => ['calibrate', bad, '--denoiser', 'median', '--out', path.join(out, 'c.tif')] },
];

describe('lying, truncated and corrupt image files', () => {
  for (const c of cases) {
    for (const command of commands) {
      test(`${command.name} ${c.name}: exit 3 naming the file`, async () => {
        const bad = paths[c.name];
        const out = path.join(root, 'out', command.name, c.name);
        const inputs = await hashAll([bad]);
        const r = await cli(command.args(bad, out));
        await expectOutcome(r, { code: 3, mentions: [bad], says: c.says, inputs, outputs: [out], maxMs: 15_000 });
      });
    }
  }
  test('eval with a corrupt denoised image: exit 3 naming it', async () => {
    const clean = path.join(root, 'eval-clean');
    const denoised = path.join(root, 'eval-denoised');
    await fs.mkdir(clean, { recursive: true });
    await fs.mkdir(denoised, { recursive: true });
    await fs.copyFile(f.png, path.join(clean, 'bad.png'));
    await fs.copyFile(paths['png-header-100000x100000'], path.join(denoised, 'bad.png'));
    const inputs = await hashAll([clean, denoised]);
    const r = await cli(['eval', '--clean', clean, '--denoised', denoised]);
    await expectOutcome(r, { code: 3, mentions: [path.join(denoised, 'bad.png')], inputs });
  });
  test('--debug adds the stack trace to a user error, and the exit code stays 3', async () => {
    const bad = paths['png-truncated'];
    const r = await cli(['noise', bad, '--debug']);
    if (r.code !== 3 || !/\n\s+at .+:\d+:\d+/.test(r.stderr)) throw new Error(`expected exit 3 with a stack, got ${r.code}: ${r.stderr}`);
  });
});
