import * as tf from '@tensorflow/tfjs-core';
import '@tensorflow/tfjs-backend-cpu';
import '@tensorflow/tfjs-backend-wasm';
import { spawnSync } from 'node:child_process';
import { existsSync, promises as fs } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { registerWasmTrainingKernels } from '../backend/kernels/index.js';
import { Rng } from '../core/rng.js';
import type { Shape } from '../core/volume.js';
import { voxelCount } from '../core/volume.js';
import { buildUNet, defaultUNetConfig, unetGeometry, type UNetConfig } from '../models/unet.js';
import { denormalise, normalise, type Normalisation } from '../models/normalise.js';
import { predictVolume, reflectedRegionReader } from '../pipeline/predict.js';
import { loadModelFolder, type ModelManifest } from '../models/io.js';
import { assertOutputIsNotInput, chooseCoreShape, denoiseChunked, denoiseUrl, parseByteSize, planStreamMemory, runFingerprint } from '../pipeline/streamDenoise.js';
import { ChunkCache, readRegionReflected } from '../storage/chunkCache.js';
import type { ChunkedArrayReader } from '../storage/chunked.js';
import { createOmeZarr } from '../storage/ome.js';
import { openChunkedSource } from '../storage/open.js';
import type { TileSpec } from '../operators/tileGrid.js';
import { DirectoryStore, MemoryArrayReader, RawChunkArray } from './fixtures/stream-arrays.js';
import { saveUntrainedModel } from './fixtures/untrainedModel.js';

let tmp = '';
beforeAll(async () => {
  await tf.setBackend('cpu');
  tmp = await fs.mkdtemp(path.join(os.tmpdir(), 'blindspot-stream-'));
});
afterAll(async () => {
  await fs.rm(tmp, { recursive: true, force: true });
});

function randomImage(shape: readonly number[], seed: number, offset = 0, spread = 1): Float32Array {
  const rng = new Rng(seed);
  return Float32Array.from({ length: voxelCount(shape) }, () => offset + spread * rng.normal());
}

function maxAbsDiff(a: Float32Array, b: Float32Array): number {
  let d = 0;
  for (let i = 0; i < a.length; i++) d = Math.max(d, Math.abs(a[i] - b[i]));
  return d;
}

function maxAbs(a: Float32Array): number {
  return a.reduce((m, v) => Math.max(m, Math.abs(v)), 0);
}

describe('readRegionReflected', () => {
  for (const [shape, chunks] of [
    [[23, 31], [8, 6]],
    [[5, 9, 11], [2, 4, 3]],
    [[1, 17], [1, 5]],
  ] as Array<[number[], number[]]>) {
    test(`equals the in-memory reflected read for regions inside, across and far outside [${shape.join('x')}] in [${chunks.join('x')}] chunks`, async () => {
      const image = randomImage(shape, 4);
      const reader = new MemoryArrayReader(image, shape, chunks);
      const reference = reflectedRegionReader(image, shape as unknown as Shape);
      const cache = new ChunkCache(1e9);
      const rng = new Rng(2);
      for (let trial = 0; trial < 40; trial++) {
        const origin = shape.map((n) => rng.int(4 * n) - 2 * n);
        const extent = shape.map((n) => 1 + rng.int(2 * n));
        const got = await readRegionReflected(reader, cache, origin, extent);
        const want = reference({ read: { origin, shape: extent } } as unknown as TileSpec);
        expect(got.length).toBe(want.length);
        expect(maxAbsDiff(got, want)).toBe(0);
      }
      // Every chunk was fetched once however often it was needed.
      expect(Math.max(...reader.reads.values())).toBe(1);
      expect(cache.stats.hits).toBeGreaterThan(cache.stats.misses);
    });
  }
});

describe('ChunkCache', () => {
  test('concurrent readers of one chunk share one fetch', async () => {
    const reader = new MemoryArrayReader(randomImage([16, 16], 1), [16, 16], [8, 8], 20);
    const cache = new ChunkCache(1e6);
    const got = await Promise.all(Array.from({ length: 5 }, () => cache.get(reader, [1, 0])));
    expect(reader.reads.get('1.0')).toBe(1);
    expect(got.every((g) => g === got[0])).toBe(true);
    expect(cache.stats).toMatchObject({ misses: 1, hits: 4, bytesHeld: 256 });
  });

  test('stays within its byte bound, dropping the least recently used chunk', async () => {
    const reader = new MemoryArrayReader(randomImage([16, 16], 1), [16, 16], [8, 8]);
    const cache = new ChunkCache(2 * 256); // two 8x8 float32 chunks
    await cache.get(reader, [0, 0]);
    await cache.get(reader, [0, 1]);
    await cache.get(reader, [0, 0]); // refreshes [0,0]: [0,1] is now the oldest
    await cache.get(reader, [1, 0]); // evicts [0,1]
    await cache.get(reader, [0, 0]);
    expect(reader.reads.get('0.0')).toBe(1);
    await cache.get(reader, [0, 1]);
    expect(reader.reads.get('0.1')).toBe(2);
    expect(cache.stats.peakBytes).toBeLessThanOrEqual(512);
    expect(cache.stats.evictions).toBeGreaterThanOrEqual(2);
  });

  test('a failed fetch is not cached and does not block a retry', async () => {
    let fail = true;
    const inner = new MemoryArrayReader(randomImage([8, 8], 1), [8, 8], [8, 8]);
    const flaky = {
      info: inner.info,
      readChunk: async (index: readonly number[]) => {
        if (fail) {
          fail = false;
          throw new Error('transient');
        }
        return inner.readChunk(index);
      },
    };
    const cache = new ChunkCache(1e6);
    await expect(cache.get(flaky, [0, 0])).rejects.toThrow(/transient/);
    expect((await cache.get(flaky, [0, 0])).length).toBe(64);
  });
});

describe('memory plan', () => {
  test('parses sizes', () => {
    expect(parseByteSize('2GiB')).toBe(2 * 2 ** 30);
    expect(parseByteSize('512M')).toBe(512 * 2 ** 20);
    expect(parseByteSize('1000')).toBe(1000);
    expect(() => parseByteSize('lots')).toThrow(/memory size/);
  });

  test('the chosen core fits the budget, grows with it, and is a multiple of the pooling size', () => {
    const base = { shape: [20_000, 30_000], inputChunks: [256, 256], sizeMultiple: 4, receptiveRadius: 22, bytesPerVoxel: 3000, modelWeightBytes: 2e6 };
    const small = planStreamMemory({ ...base, maxMemoryBytes: parseByteSize('1GiB') });
    const large = planStreamMemory({ ...base, maxMemoryBytes: parseByteSize('4GiB') });
    for (const plan of [small, large]) {
      expect(plan.totalBytes).toBeLessThanOrEqual(plan.maxMemoryBytes);
      expect(plan.coreShape.every((c) => c % 4 === 0)).toBe(true);
      expect(plan.cacheBytes).toBeGreaterThan(0);
    }
    expect(voxelCount(large.coreShape)).toBeGreaterThan(2 * voxelCount(small.coreShape));
    // The volume does not enter: a 100x larger image gets the same plan.
    const huge = planStreamMemory({ ...base, shape: [200_000, 300_000], maxMemoryBytes: parseByteSize('1GiB') });
    expect(huge.totalBytes).toBe(small.totalBytes);
    expect(() => planStreamMemory({ ...base, maxMemoryBytes: parseByteSize('200MiB') })).toThrow(/too small/);
  });

  test('chooseCoreShape covers small images whole when they fit', () => {
    expect(chooseCoreShape([70, 83], 4, 24, () => true)).toEqual([72, 84]);
    const core = chooseCoreShape([1000, 1000], 4, 24, (c) => (c[0] + 48) * (c[1] + 48) <= 200 * 200);
    expect((core[0] + 48) * (core[1] + 48)).toBeLessThanOrEqual(40_000);
    expect(core[0] * core[1]).toBeGreaterThan(100 * 100);
  });
});

test('the output may not be the input, inside it, or contain it', async () => {
  await expect(assertOutputIsNotInput('data/vol.zarr', './data/vol.zarr/')).rejects.toThrow(/overwrite the input/);
  await expect(assertOutputIsNotInput('data/vol.zarr', 'data/vol.zarr/out.zarr')).rejects.toThrow(/overwrite the input/);
  await expect(assertOutputIsNotInput('data/vol.zarr', 'data')).rejects.toThrow(/overwrite the input/);
  await expect(assertOutputIsNotInput('s3://b/p/vol.zarr', 's3://b/p/vol.zarr/')).rejects.toThrow(/overwrite the input/);
  await expect(assertOutputIsNotInput('s3://b/p/vol.zarr', 's3://b/p/vol.zarr/den')).rejects.toThrow(/overwrite the input/);
  await expect(assertOutputIsNotInput('data/vol.zarr', 'data/vol-denoised.zarr')).resolves.toBeUndefined();
  await expect(assertOutputIsNotInput('s3://b/p/vol.zarr', 's3://b/p/vol.zarr2')).resolves.toBeUndefined();
  await expect(assertOutputIsNotInput('s3://b/p/vol.zarr', 's3://c/p/vol.zarr')).resolves.toBeUndefined();
});

const normalisation: Normalisation = { mode: 'meanstd', offset: 100, scale: 20 };

async function checkStreamEqualsInMemory(cfg: UNetConfig, shape: number[], inputChunks: number[], outputChunks: number[]): Promise<void> {
  const model = buildUNet(cfg, 7);
  const geometry = unetGeometry(cfg);
  const image = randomImage(shape, 5, 100, 20);
  // In memory: what pipeline/denoise.ts denoiseVolume does.
  const inMemory = denormalise(await predictVolume(model, normalise(image, normalisation), shape as unknown as Shape, { ...geometry }), normalisation);
  const input = new MemoryArrayReader(image, shape, inputChunks);
  const outDir = await fs.mkdtemp(path.join(tmp, 'out-'));
  const output = new RawChunkArray(new DirectoryStore(outDir), shape, outputChunks);
  const before = tf.memory().numTensors;
  const result = await denoiseChunked({ input, output, model, ...geometry, normalisation, maxMemoryBytes: parseByteSize('2GiB') });
  expect(tf.memory().numTensors).toBe(before);
  const streamed = await output.readAll();
  const relative = maxAbsDiff(streamed, inMemory) / maxAbs(inMemory);
  const chunkCount = [...input.reads.keys()].length;
  console.log(
    `${cfg.dims}D [${shape.join('x')}] in [${inputChunks.join('x')}] input chunks -> ${result.chunksTotal} [${outputChunks.join('x')}] output chunks: ` +
      `relative difference ${relative.toExponential(1)}, cache ${JSON.stringify(result.cache)}`,
  );
  expect(result.chunksWritten).toBe(result.chunksTotal);
  expect(result.chunksTotal).toBeGreaterThanOrEqual(2 ** shape.length);
  expect(relative).toBeLessThan(1e-4);
  expect(maxAbsDiff(streamed, image)).toBeGreaterThan(1); // the model really changed the data
  // Every input chunk was read once: the cache held what overlapping tiles shared.
  expect(chunkCount).toBe(voxelCount(shape.map((n, a) => Math.ceil(n / inputChunks[a]))));
  expect(Math.max(...input.reads.values())).toBe(1);
  model.dispose();
}

describe('streaming denoise equals the in-memory denoise', () => {
  test('2D U-Net, 70x83 (not a multiple of the 16x20 input or 24x32 output chunks)', async () => {
    await checkStreamEqualsInMemory({ ...defaultUNetConfig(2), filters: 4 }, [70, 83], [16, 20], [24, 32]);
  });

  describe('3D (wasm backend with the project Conv3D kernel)', () => {
    beforeAll(async () => {
      await tf.setBackend('wasm');
      registerWasmTrainingKernels();
    });
    afterAll(async () => {
      await tf.setBackend('cpu');
    });
    test('3D n2v2 U-Net, 12x37x41 in 5x16x16 input and 8x20x24 output chunks', async () => {
      await checkStreamEqualsInMemory({ ...defaultUNetConfig(3), filters: 2, variant: 'n2v2' }, [12, 37, 41], [5, 16, 16], [8, 20, 24]);
    });
  });
});

describe('resume (in process)', () => {
  const cfg: UNetConfig = { ...defaultUNetConfig(2), filters: 2, depth: 1 };
  const shape = [45, 61];
  const outputChunks = [8, 12];
  const image = randomImage(shape, 9, 100, 20);

  async function run(outDir: string, opts: { abortAfter?: number; resume?: boolean }) {
    const model = buildUNet(cfg, 3);
    const geometry = unetGeometry(cfg);
    const store = new DirectoryStore(outDir);
    const output = new RawChunkArray(store, shape, outputChunks);
    const controller = new AbortController();
    let written = 0;
    try {
      return await denoiseChunked({
        input: new MemoryArrayReader(image, shape, [16, 16]),
        output,
        model,
        ...geometry,
        normalisation,
        maxMemoryBytes: parseByteSize('1GiB'),
        journal: { store, fingerprint: runFingerprint({ cfg, seed: 3 }) },
        resume: opts.resume,
        signal: controller.signal,
        onEvent: (e) => {
          if (e.type === 'chunk' && ++written === opts.abortAfter) controller.abort();
        },
      });
    } finally {
      model.dispose();
    }
  }

  async function listFiles(dir: string): Promise<string[]> {
    return (await fs.readdir(dir, { recursive: true })).map(String).sort();
  }

  test('an interrupted run, resumed, computes only the missing chunks and stores the same bytes; a damaged chunk is redone', async () => {
    const whole = await fs.mkdtemp(path.join(tmp, 'whole-'));
    const first = await run(whole, {});
    expect(first.interrupted).toBe(false);

    const parts = await fs.mkdtemp(path.join(tmp, 'parts-'));
    const stopped = await run(parts, { abortAfter: 10 });
    expect(stopped.interrupted).toBe(true);
    expect(stopped.chunksWritten).toBeLessThan(stopped.chunksTotal);
    await expect(run(parts, {})).rejects.toThrow(/--resume/);
    // Damage one journaled chunk: its bytes no longer match the journal.
    await fs.writeFile(path.join(parts, 'c', '0', '1'), new Uint8Array(8 * 12 * 4));
    const resumed = await run(parts, { resume: true });
    expect(resumed.interrupted).toBe(false);
    expect(resumed.chunksSkipped).toBe(stopped.chunksWritten - 1);
    expect(resumed.chunksWritten).toBe(resumed.chunksTotal - resumed.chunksSkipped);

    const files = await listFiles(whole);
    expect(await listFiles(parts)).toEqual(files);
    for (const f of files) {
      if ((await fs.stat(path.join(whole, f))).isFile()) expect(Buffer.compare(await fs.readFile(path.join(whole, f)), await fs.readFile(path.join(parts, f)))).toBe(0);
    }
    // A complete output resumed does nothing.
    const again = await run(parts, { resume: true });
    expect(again.chunksWritten).toBe(0);
    expect(again.chunksSkipped).toBe(again.chunksTotal);
  });

  test('a different model at the same output is refused', async () => {
    const dir = await fs.mkdtemp(path.join(tmp, 'other-'));
    await run(dir, { abortAfter: 3 });
    const model = buildUNet(cfg, 4);
    const store = new DirectoryStore(dir);
    await expect(
      denoiseChunked({
        input: new MemoryArrayReader(image, shape, [16, 16]),
        output: new RawChunkArray(store, shape, outputChunks),
        model,
        ...unetGeometry(cfg),
        normalisation,
        maxMemoryBytes: parseByteSize('1GiB'),
        journal: { store, fingerprint: runFingerprint({ cfg, seed: 4 }) },
        resume: true,
      }),
    ).rejects.toThrow(/different model/);
    model.dispose();
  });
});

describe('CLI (from dist/, built by pretest)', () => {
  const cli = path.join(path.resolve(path.dirname(new URL(import.meta.url).pathname), '..'), 'dist', 'cli', 'main.js');
  test.skipIf(!existsSync(cli))('refuses to write a streaming output over or inside its input, before writing anything', () => {
    for (const out of [path.join(tmp, 'in.zarr'), path.join(tmp, 'in.zarr', 'den.zarr')]) {
      const r = spawnSync(process.execPath, [cli, 'denoise', path.join(tmp, 'model'), path.join(tmp, 'in.zarr'), '--out', out, '--backend', 'cpu'], { encoding: 'utf8' });
      expect(r.status).toBe(4);
      expect(r.stderr).toMatch(/would overwrite the input/);
      expect(existsSync(out)).toBe(false);
    }
  });
});

describe('denoiseUrl: OME-Zarr in, OME-Zarr out', () => {
  const saveTinyModel = (dir: string, cfg: UNetConfig): Promise<ModelManifest> => saveUntrainedModel(dir, cfg, normalisation, 12);

  async function readArray(reader: ChunkedArrayReader): Promise<Float32Array> {
    const scratch = new RawChunkArray(new DirectoryStore(await fs.mkdtemp(path.join(tmp, 'scratch-'))), reader.info.shape, reader.info.chunks);
    for (const index of (function* () {
      const grid = reader.info.shape.map((n, a) => Math.ceil(n / reader.info.chunks[a]));
      for (let y = 0; y < grid[0]; y++) for (let x = 0; x < grid[1]; x++) yield [y, x];
    })()) {
      await scratch.writeChunk(index, await reader.readChunk(index));
    }
    return scratch.readAll();
  }

  test('2D: equals the in-memory denoise; refuses its input as output; resumed output is byte-identical', async () => {
    const cfg: UNetConfig = { ...defaultUNetConfig(2), filters: 4 };
    const modelDir = path.join(tmp, 'zarr-model');
    await saveTinyModel(modelDir, cfg);
    const shape = [70, 83];
    const image = randomImage(shape, 21, 100, 20);
    const inputUrl = path.join(tmp, 'in.zarr');
    const writer = await createOmeZarr(inputUrl, {
      shape,
      chunks: [16, 20],
      dtype: 'float32',
      axes: [{ name: 'y', type: 'space', unit: 'micrometer' }, { name: 'x', type: 'space', unit: 'micrometer' }],
      placement: { scale: [0.5, 0.25], translation: [10, 20] },
    });
    const source = new MemoryArrayReader(image, shape, [16, 20]);
    for (let y = 0; y < 5; y++) for (let x = 0; x < 5; x++) await writer.writeChunk([y, x], await source.readChunk([y, x]));

    await expect(denoiseUrl({ input: inputUrl, out: inputUrl, modelDir, maxMemoryBytes: parseByteSize('1GiB'), outputChunks: [16, 16] })).rejects.toThrow(/overwrite the input/);

    const outA = path.join(tmp, 'a.zarr');
    await denoiseUrl({ input: inputUrl, out: outA, modelDir, maxMemoryBytes: parseByteSize('1GiB'), outputChunks: [16, 16] });
    const denoised = await openChunkedSource(outA);
    expect(denoised.info.placement).toEqual({ scale: [0.5, 0.25], translation: [10, 20] });
    const model = buildUNet(cfg, 12);
    const loaded = await loadModelFolder(modelDir);
    const inMemory = denormalise(await predictVolume(loaded.model, normalise(image, normalisation), shape as unknown as Shape, unetGeometry(cfg)), normalisation);
    loaded.model.dispose();
    model.dispose();
    const streamed = await readArray(denoised);
    expect(maxAbsDiff(streamed, inMemory) / maxAbs(inMemory)).toBeLessThan(1e-4);

    // Interrupted after 2 chunks, resumed: the same files, byte for byte.
    const outB = path.join(tmp, 'b.zarr');
    const controller = new AbortController();
    let chunks = 0;
    const stopped = await denoiseUrl({
      input: inputUrl, out: outB, modelDir, maxMemoryBytes: parseByteSize('1GiB'), outputChunks: [16, 16], signal: controller.signal,
      onEvent: (e) => { if (e.type === 'chunk' && ++chunks === 2) controller.abort(); },
    });
    const resumed = await denoiseUrl({ input: inputUrl, out: outB, modelDir, maxMemoryBytes: parseByteSize('1GiB'), outputChunks: [16, 16], resume: true });
    expect(stopped.interrupted).toBe(true);
    expect(stopped.chunksTotal).toBe(30);
    expect(resumed.chunksSkipped).toBeGreaterThanOrEqual(1);
    expect(resumed.chunksSkipped + resumed.chunksWritten).toBe(30);
    const files = (await fs.readdir(outA, { recursive: true })).map(String).sort();
    expect((await fs.readdir(outB, { recursive: true })).map(String).sort()).toEqual(files);
    for (const f of files) {
      if ((await fs.stat(path.join(outA, f))).isFile()) expect(Buffer.compare(await fs.readFile(path.join(outA, f)), await fs.readFile(path.join(outB, f))), f).toBe(0);
    }
  });
});
