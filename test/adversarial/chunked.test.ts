/**
 * Adversarial chunked inputs (Zarr v2/v3, OME-Zarr 0.4/0.5, frame folders, TIFF stacks): corrupt
 * metadata, absurd shapes and chunks, unsupported data types and codecs, truncated and corrupt chunks,
 * through the streaming denoise, streaming training and plan. Each must exit 3 naming the file or
 * chunk, in bounded time, with the input unchanged and no output that looks complete (an OME-Zarr a
 * failed run created carries the incomplete marker).
 */
import { promises as fs } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { writeImage } from '../../storage/index.js';
import { cli, expectOutcome, hashAll, plantSecret } from './harness.js';
import { copyTree, editJson, makeFixtures, tiffWithTag, writeZarr, zstd, type Fixtures } from './fixtures.js';

let f: Fixtures;
let restoreEnv: () => void;
const root = path.join(os.tmpdir(), `blindspot-adversarial-chunked-${process.pid}`);

interface BadSource {
  name: string;
  /** Makes the bad source at `at` (a path ending .zarr, a folder or a .tif). */
  make: (at: string) => Promise<void>;
  /** The file the message must name (relative to the source), default the source itself. */
  names?: string;
  says?: RegExp;
  /** Broken only in chunk contents: plan (which reads no chunk) may succeed. */
  contentOnly?: boolean;
  /** A frame folder or TIFF stack: train needs --stream. */
  stream?: boolean;
  ext?: string;
}

async function everyChunk(dir: string, edit: (bytes: Uint8Array) => Promise<Uint8Array> | Uint8Array): Promise<void> {
  for (const name of await fs.readdir(dir, { recursive: true })) {
    const file = path.join(dir, String(name));
    if (!/(^|\/)(c\/)?\d+\/\d+$/.test(String(name))) continue;
    if ((await fs.stat(file)).isFile()) await fs.writeFile(file, await edit(new Uint8Array(await fs.readFile(file))));
  }
}

const v3 = (at: string): string => path.join(at, 'zarr.json');
const v2 = (at: string): string => path.join(at, '.zarray');
const chunkShape = (doc: Record<string, unknown>) => (doc.chunk_grid as { configuration: { chunk_shape: unknown } }).configuration;

const cases: BadSource[] = [
  { name: 'v3-corrupt-zarr.json', make: async (at) => { await copyTree(f.zarr3, at); await fs.writeFile(v3(at), '{"zarr_format": 3, "node_type": "arr'); }, names: 'zarr.json', says: /JSON/ },
  { name: 'v2-corrupt-.zarray', make: async (at) => { await copyTree(f.zarr2, at); await fs.writeFile(v2(at), '{{{'); }, names: '.zarray', says: /JSON/ },
  { name: 'v3-zero-chunks', make: async (at) => { await copyTree(f.zarr3, at); await editJson(v3(at), (d) => (chunkShape(d).chunk_shape = [0, 0])); }, says: /positive integer/ },
  { name: 'v2-zero-chunks', make: async (at) => { await copyTree(f.zarr2, at); await editJson(v2(at), (d) => (d.chunks = [0, 16])); }, says: /positive integer/ },
  { name: 'v3-negative-shape', make: async (at) => { await copyTree(f.zarr3, at); await editJson(v3(at), (d) => (d.shape = [-32, 32])); }, says: /non-negative integer/ },
  { name: 'v2-fractional-shape', make: async (at) => { await copyTree(f.zarr2, at); await editJson(v2(at), (d) => (d.shape = [31.5, 32])); }, says: /integer/ },
  { name: 'v3-shape-strings', make: async (at) => { await copyTree(f.zarr3, at); await editJson(v3(at), (d) => (d.shape = ['a', 32])); }, says: /integer/ },
  { name: 'v2-complex64', make: async (at) => { await copyTree(f.zarr2, at); await editJson(v2(at), (d) => (d.dtype = '<c8')); }, says: /dtype complex64 is not supported/ },
  { name: 'v3-complex64', make: async (at) => { await copyTree(f.zarr3, at); await editJson(v3(at), (d) => (d.data_type = 'complex64')); }, says: /dtype complex64 is not supported/ },
  { name: 'v2-object-dtype', make: async (at) => { await copyTree(f.zarr2, at); await editJson(v2(at), (d) => (d.dtype = '|O')); }, says: /dtype object is not supported/ },
  { name: 'v3-unknown-codec', make: async (at) => { await copyTree(f.zarr3, at); await editJson(v3(at), (d) => (d.codecs = [{ name: 'bytes', configuration: { endian: 'little' } }, { name: 'frobnicate' }])); }, says: /codec "frobnicate"/ },
  { name: 'v2-unknown-compressor', make: async (at) => { await copyTree(f.zarr2, at); await editJson(v2(at), (d) => (d.compressor = { id: 'frobnicate' })); }, says: /codec "frobnicate"/ },
  { name: 'v3-chunk-1e12-elements', make: async (at) => { await copyTree(f.zarr3, at); await editJson(v3(at), (d) => { d.shape = [1_000_000, 1_000_000]; chunkShape(d).chunk_shape = [1_000_000, 1_000_000]; }); }, says: /elements/ },
  { name: 'v3-1e26-chunks', make: async (at) => { await copyTree(f.zarr3, at); await editJson(v3(at), (d) => { d.shape = [1e13, 1e13]; chunkShape(d).chunk_shape = [1, 1]; }); }, says: /chunks/ },
  { name: 'v2-rank-mismatch', make: async (at) => { await copyTree(f.zarr2, at); await editJson(v2(at), (d) => (d.chunks = [16])); }, says: /dimensions/ },
  { name: 'v3-empty-shape', make: async (at) => { await copyTree(f.zarr3, at); await editJson(v3(at), (d) => (d.shape = [0, 32])); }, says: /empty/ },
  { name: 'v3-no-metadata', make: async (at) => { await fs.mkdir(at, { recursive: true }); }, says: /no Zarr metadata|not a Zarr/ },
  { name: 'v3-raw-chunks-truncated', make: async (at) => { await writeZarr(at, { zarrVersion: 3, codec: 'none' }); await everyChunk(at, (b) => b.subarray(0, b.length >> 1)); }, says: /chunk \/c\/\d\/\d.*128 bytes.*256/, contentOnly: true },
  { name: 'v2-raw-chunks-too-long', make: async (at) => { await writeZarr(at, { zarrVersion: 2, codec: 'none' }); await everyChunk(at, (b) => Uint8Array.from([...b, ...b])); }, says: /chunk .*(truncated|corrupt)/, contentOnly: true },
  { name: 'v3-zstd-decodes-short', make: async (at) => { await writeZarr(at, { zarrVersion: 3 }); await everyChunk(at, () => zstd(new Uint8Array(100))); }, says: /chunk .*100 bytes.*256/, contentOnly: true },
  { name: 'v2-zstd-truncated', make: async (at) => { await writeZarr(at, { zarrVersion: 2 }); await everyChunk(at, (b) => b.subarray(0, 9)); }, says: /chunk .*(truncated|corrupt)/, contentOnly: true },
  { name: 'v3-uint16-odd-bytes', make: async (at) => { await writeZarr(at, { zarrVersion: 3, codec: 'none', dtype: 'uint16' }); await everyChunk(at, (b) => b.subarray(0, 301)); }, says: /chunk .*(truncated|corrupt)/, contentOnly: true },
  { name: 'ome05-marked-incomplete', make: async (at) => { await copyTree(f.ome05, at); await editJson(v3(at), (d) => ((d.attributes as Record<string, unknown>).blindspot_incomplete = { note: 'x' })); }, says: /incomplete/ },
  { name: 'ome04-corrupt-.zattrs', make: async (at) => { await copyTree(f.ome04, at); await fs.writeFile(path.join(at, '.zattrs'), '{"multiscales": ['); }, names: '.zattrs', says: /JSON/ },
  { name: 'ome05-no-datasets', make: async (at) => { await copyTree(f.ome05, at); await editJson(v3(at), (d) => (((d.attributes as { ome: { multiscales: Array<Record<string, unknown>> } }).ome.multiscales[0].datasets = []))); }, says: /datasets/ },
  { name: 'ome04-level-zero-codec', make: async (at) => { await copyTree(f.ome04, at); await editJson(path.join(at, '0', '.zarray'), (d) => (d.compressor = { id: 'nope' })); }, names: '0/.zarray', says: /codec "nope"/ },
  {
    name: 'frames-of-different-sizes',
    stream: true,
    ext: '',
    make: async (at) => {
      await copyTree(f.frames, at);
      await writeImage(path.join(at, 'f1.png'), { data: new Float32Array(48 * 40).fill(9), shape: [48, 40], sampleType: 'uint8' }, { overwrite: true });
    },
    names: 'f1.png',
  },
  { name: 'frames-corrupt-frame', stream: true, ext: '', make: async (at) => { await copyTree(f.frames, at); await fs.writeFile(path.join(at, 'f2.png'), (await fs.readFile(path.join(at, 'f2.png'))).subarray(0, 50)); }, names: 'f2.png', contentOnly: true },
  { name: 'frames-empty-folder', stream: true, ext: '', make: async (at) => { await fs.mkdir(at, { recursive: true }); } },
  { name: 'stack-zero-width', stream: true, ext: '.tif', make: async (at) => { await fs.writeFile(at, tiffWithTag(new Uint8Array(await fs.readFile(f.stack)), 256, 0)); }, says: /zero|width/ },
];

const sources: Record<string, string> = {};

beforeAll(async () => {
  restoreEnv = plantSecret();
  await fs.rm(root, { recursive: true, force: true });
  f = await makeFixtures(root);
  for (const c of cases) {
    const at = path.join(root, 'cases', c.name, `in${c.ext ?? '.zarr'}`);
    await fs.mkdir(path.dirname(at), { recursive: true });
    await c.make(at);
    sources[c.name] = at;
  }
});

afterAll(async () => {
  restoreEnv();
  await fs.rm(root, { recursive: true, force: true });
});

const commands: Array<{ name: string; args: (input: string, out: string, c: BadSource) => string[] | null }> = [
  { name: 'denoise (streamed)', args: (input, out, c) => ['denoise', c.stream ? f.model3d : f.model, input, '--out', `${out}.zarr`, '--backend', 'cpu', '--max-memory', '256MiB'] },
  {
    name: 'train (streamed)',
    args: (input, out, c) => ['train', input, '--out', out, '--steps', '1', '--patch', c.stream ? '2x16x16' : '16x16', '--batch-size', '2', '--filters', '4', '--depth', '1', '--backend', 'cpu', '--max-memory', '256MiB', ...(c.stream ? ['--stream'] : [])],
  },
  { name: 'plan', args: (input, _out, c) => (c.contentOnly ? null : ['plan', input, '--model', c.stream ? f.model3d : f.model, '--no-measure', '--backend', 'cpu']) },
];

describe('corrupt, lying and absurd chunked inputs', () => {
  for (const c of cases) {
    for (const command of commands) {
      test(`${command.name} ${c.name}: exit 3 naming the file`, async (ctx) => {
        const input = sources[c.name];
        const out = path.join(root, 'out', command.name.split(' ')[0], c.name);
        const args = command.args(input, out, c);
        if (!args) return ctx.skip();
        const inputs = await hashAll([input]);
        const r = await cli(args);
        await expectOutcome(r, { code: 3, mentions: [c.names ? path.join(input, c.names) : input], says: c.says, inputs, outputs: [out, `${out}.zarr`], maxMs: 20_000 });
      });
    }
  }

  test('a streamed denoise that fails mid-run leaves its output marked incomplete, with the reason and how to resume', async () => {
    const input = sources['v3-raw-chunks-truncated'];
    const out = path.join(root, 'out', 'marker.zarr');
    const r = await cli(['denoise', f.model, input, '--out', out, '--backend', 'cpu', '--max-memory', '256MiB']);
    expect(r.code).toBe(3);
    const doc = JSON.parse(await fs.readFile(path.join(out, 'zarr.json'), 'utf8')) as { attributes: Record<string, { note: string; failure?: string }> };
    const marker = doc.attributes.blindspot_incomplete;
    expect(marker.note).toMatch(/incomplete.*--resume.*remove/);
    expect(marker.failure).toMatch(/truncated or corrupt/);
    // No reader takes it for a result: reading it back is refused.
    const again = await cli(['plan', out, '--model', f.model, '--no-measure', '--backend', 'cpu']);
    await expectOutcome(again, { code: 3, mentions: [out], says: /incomplete/ });
  });

  test('a streamed denoise that succeeds clears the marker (OME-Zarr 0.4 out of an OME-Zarr 0.5 input)', async () => {
    const out = path.join(root, 'out', 'ok.zarr');
    const inputs = await hashAll([f.ome05]);
    const r = await cli(['denoise', f.model, f.ome05, '--out', out, '--backend', 'cpu', '--max-memory', '256MiB', '--ngff-version', '0.4']);
    await expectOutcome(r, { code: 0, inputs, maxMs: 60_000 });
    const attrs = JSON.parse(await fs.readFile(path.join(out, '.zattrs'), 'utf8')) as Record<string, unknown>;
    expect(attrs.multiscales).toBeDefined();
    expect(attrs.blindspot_incomplete).toBeUndefined();
  });
});
