import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { promises as fs } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import * as zarr from 'zarrita';
import Zstd from 'numcodecs/zstd';
import GZip from 'numcodecs/gzip';
import Blosc from 'numcodecs/blosc';
import Zlib from 'numcodecs/zlib';
import { FileSystemStore, isTempFileName } from '../storage/fsStore.js';
import { arrayMetadata, chunkKey, createZarrArray, encodeJson, openZarrArray, type ZarrVersion } from '../storage/zarr.js';
import { chunkGrid } from '../storage/chunked.js';
import { OutputError } from '../core/errors.js';
import { Rng } from '../core/rng.js';
import type { SampleType } from '../core/volume.js';

let dir: string;
beforeAll(async () => {
  dir = await fs.mkdtemp(path.join(os.tmpdir(), 'blindspot-zarr-'));
});
afterAll(async () => {
  await fs.rm(dir, { recursive: true, force: true });
});

const shape = [20, 50, 70];
const chunks = [8, 16, 32];

function makeVolume(seed: number): Float32Array {
  const rng = new Rng(seed);
  const data = new Float32Array(shape[0] * shape[1] * shape[2]);
  for (let i = 0; i < data.length; i++) data[i] = Math.floor(rng.uniform() * 1000) + 0.25;
  return data;
}

/** The whole (padded) chunk `index` cut from a C-order volume, padding 0. */
function cutChunk(volume: Float32Array, index: number[]): Float32Array {
  const out = new Float32Array(chunks[0] * chunks[1] * chunks[2]);
  for (let z = 0; z < chunks[0]; z++)
    for (let y = 0; y < chunks[1]; y++)
      for (let x = 0; x < chunks[2]; x++) {
        const gz = index[0] * chunks[0] + z;
        const gy = index[1] * chunks[1] + y;
        const gx = index[2] * chunks[2] + x;
        if (gz < shape[0] && gy < shape[1] && gx < shape[2]) {
          out[(z * chunks[1] + y) * chunks[2] + x] = volume[(gz * shape[1] + gy) * shape[2] + gx];
        }
      }
  return out;
}

function* allChunks(grid: number[]): Generator<number[]> {
  for (let i = 0; i < grid[0]; i++) for (let j = 0; j < grid[1]; j++) for (let k = 0; k < grid[2]; k++) yield [i, j, k];
}

describe('FileSystemStore', () => {
  it('gets, ranges (incl. suffix), lists recursively and reports missing keys as undefined', async () => {
    const store = new FileSystemStore(path.join(dir, 'fs1'));
    expect(await store.get('/missing')).toBeUndefined();
    expect(await store.getRange('/missing', { offset: 0, length: 3 })).toBeUndefined();
    await store.set('/a/b/c', new Uint8Array([1, 2, 3, 4, 5]));
    await store.set('/a/d', new Uint8Array([9]));
    await store.set('/top', new Uint8Array([7]));
    expect([...(await store.get('/a/b/c'))!]).toEqual([1, 2, 3, 4, 5]);
    expect([...(await store.getRange('/a/b/c', { offset: 1, length: 2 }))!]).toEqual([2, 3]);
    expect([...(await store.getRange('/a/b/c', { suffixLength: 2 }))!]).toEqual([4, 5]);
    const keys: string[] = [];
    for await (const k of store.list()) keys.push(k);
    expect(keys.sort()).toEqual(['/a/b/c', '/a/d', '/top']);
    const underA: string[] = [];
    for await (const k of store.list('/a')) underA.push(k);
    expect(underA.sort()).toEqual(['/a/b/c', '/a/d']);
    await store.delete('/a/d');
    expect(await store.get('/a/d')).toBeUndefined();
  });

  it('writes through a temp file and removes only its own leftovers', async () => {
    const root = path.join(dir, 'fs2');
    const store = new FileSystemStore(root);
    await store.set('/x/key', new Uint8Array([1]));
    // No temp file is left after a completed write.
    expect((await fs.readdir(path.join(root, 'x'))).filter(isTempFileName)).toEqual([]);
    // What a writer killed between write and rename leaves behind, plus files that are not ours.
    await fs.writeFile(path.join(root, 'x', `.key.tmp-123-abcdef`), 'partial');
    await fs.writeFile(path.join(root, `.zattrs`), '{}');
    await fs.writeFile(path.join(root, 'x', 'notes.tmp-keep'), 'user file');
    const listed: string[] = [];
    for await (const k of store.list()) listed.push(k);
    expect(listed).not.toContain('/x/.key.tmp-123-abcdef');
    expect(await store.cleanUpInterruptedWrites()).toBe(1);
    expect((await fs.readdir(path.join(root, 'x'))).sort()).toEqual(['key', 'notes.tmp-keep']);
    expect(await fs.readFile(path.join(root, '.zattrs'), 'utf8')).toBe('{}');
  });
});

describe('FileSystemStore atomicity', () => {
  it('concurrent readers see the old bytes or the new ones, never a mix', async () => {
    const store = new FileSystemStore(path.join(dir, 'fs3'));
    const a = new Uint8Array(2 << 20).fill(1);
    const b = new Uint8Array(2 << 20).fill(2);
    await store.set('/k', a);
    let writing = true;
    const writer = (async () => {
      for (let i = 0; i < 10; i++) await store.set('/k', i % 2 ? a : b);
      writing = false;
    })();
    let reads = 0;
    while (writing) {
      const got = (await store.get('/k'))!;
      expect(got.length).toBe(a.length);
      expect(got[0] === got[got.length - 1] && got[got.length >> 1] === got[0]).toBe(true);
      reads++;
    }
    await writer;
    expect(reads).toBeGreaterThan(0);
    expect((await fs.readdir(path.join(dir, 'fs3'))).sort()).toEqual(['k']);
  });
});

describe.each([2, 3] as ZarrVersion[])('Zarr v%i round trip', (version) => {
  it.each(['zstd', 'gzip', 'none'] as const)('codec %s: our reader and zarrita get return what was written', async (codec) => {
    const root = path.join(dir, `v${version}-${codec}.zarr`);
    const store = new FileSystemStore(root);
    const writer = await createZarrArray(store, '/', { shape, chunks, dtype: 'float32', zarrVersion: version, codec });
    const volume = makeVolume(version * 10 + codec.length);
    const grid = chunkGrid({ shape, chunks });
    expect(grid).toEqual([3, 4, 3]);
    for (const index of allChunks(grid)) {
      const stored = await writer.writeChunk(index, cutChunk(volume, index));
      expect(await writer.readStoredChunk(index)).toEqual(stored);
    }
    expect(await fs.readFile(path.join(root, version === 3 ? 'zarr.json' : '.zarray'), 'utf8')).toContain(version === 3 ? '"zarr_format": 3' : '"zarr_format": 2');
    const reader = await openZarrArray(new FileSystemStore(root));
    expect(reader.zarrVersion).toBe(version);
    expect(reader.info.shape).toEqual(shape);
    expect(reader.info.chunks).toEqual(chunks);
    for (const index of allChunks(grid)) expect(await reader.readChunk(index)).toEqual(cutChunk(volume, index));
    // Plain zarrita on its own store, whole array at once.
    const array = await zarr.open(new FileSystemStore(root), { kind: 'array' });
    const whole = await zarr.get(array);
    expect(whole.shape).toEqual(shape);
    expect(Float32Array.from(whole.data as Float32Array)).toEqual(volume);
  });

  it('rounds and clips into integer types', async () => {
    const root = path.join(dir, `v${version}-uint8.zarr`);
    const store = new FileSystemStore(root);
    const small = { shape: [3, 5], chunks: [2, 4] };
    const writer = await createZarrArray(store, '/', { ...small, dtype: 'uint8', zarrVersion: version });
    await writer.writeChunk([0, 0], Float32Array.from([-5, 0.4, 0.6, 254.5, 300, 7, 8.49, NaN]));
    const reader = await openZarrArray(store);
    expect(reader.info.dtype).toBe('uint8');
    expect([...(await reader.readChunk([0, 0]))]).toEqual([0, 0, 1, 255, 255, 7, 8, 0]);
    // A chunk never written reads as the fill value.
    expect([...(await reader.readChunk([1, 1]))]).toEqual(new Array(8).fill(0));
    expect(await writer.readStoredChunk([1, 1])).toBeNull();
  });

  it('creating metadata is idempotent; different metadata is an OutputError naming the output', async () => {
    const root = path.join(dir, `v${version}-meta.zarr`);
    const store = new FileSystemStore(root);
    const spec = { shape, chunks, dtype: 'uint16' as SampleType, zarrVersion: version };
    await createZarrArray(store, '/', spec);
    const name = version === 3 ? 'zarr.json' : '.zarray';
    const before = await fs.readFile(path.join(root, name));
    await createZarrArray(store, '/', spec);
    expect(await fs.readFile(path.join(root, name))).toEqual(before);
    const conflict = createZarrArray(store, '/', { ...spec, chunks: [4, 16, 32] });
    await expect(conflict).rejects.toBeInstanceOf(OutputError);
    await expect(createZarrArray(store, '/', { ...spec, chunks: [4, 16, 32] })).rejects.toThrow(root);
  });
});

describe('reading Zarr v2 arrays with every codec', () => {
  it.each([
    ['blosc', { id: 'blosc', cname: 'lz4', clevel: 5, shuffle: 1, blocksize: 0 }, Blosc],
    ['blosc-zstd', { id: 'blosc', cname: 'zstd', clevel: 3, shuffle: 2, blocksize: 0 }, Blosc],
    ['gzip', { id: 'gzip', level: 1 }, GZip],
    ['zstd', { id: 'zstd', level: 1 }, Zstd],
    ['zlib', { id: 'zlib', level: 1 }, Zlib],
    ['raw', null, null],
  ] as const)('%s', async (name, compressor, Codec) => {
    const root = path.join(dir, `codec-${name}.zarr`);
    const store = new FileSystemStore(root);
    const small = { shape: [5, 7], chunks: [4, 4] };
    // Written by hand the way zarr-python writes v2 ('.' separator, int16).
    await store.set('/.zarray', encodeJson({ chunks: small.chunks, compressor, dtype: '<i2', fill_value: 0, filters: null, order: 'C', shape: small.shape, zarr_format: 2 }));
    const rng = new Rng(name.length);
    const values = Array.from({ length: 35 }, () => Math.floor(rng.uniform() * 2000) - 1000);
    for (let i = 0; i < 2; i++)
      for (let j = 0; j < 2; j++) {
        const chunk = new Int16Array(16);
        for (let y = 0; y < 4; y++) for (let x = 0; x < 4; x++) {
          const gy = i * 4 + y;
          const gx = j * 4 + x;
          if (gy < 5 && gx < 7) chunk[y * 4 + x] = values[gy * 7 + gx];
        }
        const raw = new Uint8Array(chunk.buffer);
        const bytes = Codec && compressor ? await Codec.fromConfig(compressor as never).encode(raw) : raw;
        await store.set(`/${i}.${j}`, bytes);
      }
    const reader = await openZarrArray(store);
    expect(reader.info.dtype).toBe('int16');
    const chunk = await reader.readChunk([1, 1]);
    expect(chunk[0]).toBe(values[4 * 7 + 4]);
    expect(chunk[2]).toBe(values[4 * 7 + 6]);
    expect(chunk[3]).toBe(0);
    const whole = await zarr.get(reader.array);
    expect(Array.from(whole.data as Int16Array)).toEqual(values);
  });

  it('reads Fortran-ordered v2 chunks into C order', async () => {
    const store = new FileSystemStore(path.join(dir, 'fortran.zarr'));
    await store.set('/.zarray', encodeJson({ chunks: [3, 4], compressor: null, dtype: '<f4', fill_value: 0, filters: null, order: 'F', shape: [3, 4], zarr_format: 2 }));
    const cOrder = Float32Array.from({ length: 12 }, (_, i) => i * 1.5);
    const fOrder = new Float32Array(12);
    for (let y = 0; y < 3; y++) for (let x = 0; x < 4; x++) fOrder[x * 3 + y] = cOrder[y * 4 + x];
    await store.set('/0.0', new Uint8Array(fOrder.buffer));
    const reader = await openZarrArray(store);
    expect(await reader.readChunk([0, 0])).toEqual(cOrder);
  });

  it('writes v3 chunk keys /c/i/j/k and v2 keys i/j/k', () => {
    expect(chunkKey('/', [1, 2, 3], 3)).toBe('/c/1/2/3');
    expect(chunkKey('/0', [1, 2, 3], 2)).toBe('/0/1/2/3');
    expect(arrayMetadata({ shape: [4], chunks: [2], dtype: 'float32', zarrVersion: 3 }).codecs).toEqual([
      { name: 'bytes', configuration: { endian: 'little' } },
      { name: 'zstd', configuration: { level: 3, checksum: false } },
    ]);
  });
});
