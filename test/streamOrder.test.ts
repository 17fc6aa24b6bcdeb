/**
 * Block order with input-chunk locality (operators/tileGrid.ts planBlockSweep / sweepBlocks):
 * a streaming denoise fetches each input chunk about once even when the cache cannot hold a
 * plane's worth of halo chunks, writes the same bytes in any order, and sharded runs still own
 * their raster ranges.
 */
import * as tf from '@tensorflow/tfjs-core';
import '@tensorflow/tfjs-backend-cpu';
import { promises as fs } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { Rng } from '../core/rng.js';
import type { Shape } from '../core/volume.js';
import { voxelCount } from '../core/volume.js';
import { buildUNet, defaultUNetConfig, unetGeometry, type UNetConfig } from '../models/unet.js';
import type { Normalisation } from '../models/normalise.js';
import { type TilePlan, planBlockSweep, planTileGrid, readChunkSpans, sweepBlocks } from '../operators/tileGrid.js';
import { estimateBytesPerVoxel } from '../pipeline/predict.js';
import { type DenoiseChunkedResult, type StreamDenoiseEvent, denoiseChunked, parseByteSize, planStreamMemory, runFingerprint } from '../pipeline/streamDenoise.js';
import { ChunkCache } from '../storage/chunkCache.js';
import type { ChunkedArrayReader } from '../storage/chunked.js';
import { createOmeZarr, type OmeZarrWriter } from '../storage/ome.js';
import { openByteStore, openChunkedSource } from '../storage/open.js';

let tmp = '';
beforeAll(async () => {
  await tf.setBackend('cpu');
  tmp = await fs.mkdtemp(path.join(os.tmpdir(), 'blindspot-order-'));
});
afterAll(async () => {
  await fs.rm(tmp, { recursive: true, force: true });
});

function rasterOrdinal(index: readonly number[], grid: readonly number[]): number {
  return index.reduce((o, k, axis) => o * grid[axis] + k, 0);
}

/**
 * Input-chunk fetches of `order` through an LRU cache of `cacheChunks` chunks, one block's chunks
 * after the other (what ChunkCache does without read-ahead): fetches per distinct chunk.
 */
function simulateFetchesPerChunk(plan: TilePlan, inputChunks: readonly number[], cacheChunks: number, order: Iterable<readonly number[]>): number {
  const spans = inputChunks.map((chunk, axis) => readChunkSpans(plan, axis, chunk));
  const chunkGridShape = inputChunks.map((chunk, axis) => Math.ceil(plan.imageShape[axis] / chunk));
  const lru = new Map<number, true>();
  const fetched = new Set<number>();
  let fetches = 0;
  for (const index of order) {
    const low = index.map((k, axis) => spans[axis].first[k]);
    const high = index.map((k, axis) => spans[axis].last[k]);
    const chunk = [...low];
    for (;;) {
      const key = rasterOrdinal(chunk, chunkGridShape);
      if (lru.has(key)) {
        lru.delete(key);
      } else {
        fetches++;
        fetched.add(key);
        if (lru.size >= cacheChunks) lru.delete(lru.keys().next().value as number);
      }
      lru.set(key, true);
      let axis = chunk.length - 1;
      for (; axis >= 0; axis--) {
        if (++chunk[axis] <= high[axis]) break;
        chunk[axis] = low[axis];
      }
      if (axis < 0) break;
    }
  }
  return fetches / fetched.size;
}

const axesFor = (dims: number) => (dims === 2 ? ['y', 'x'] : ['z', 'y', 'x']).map((name) => ({ name, type: 'space' as const }));
const rasterColumn = (grid: readonly number[]): number[] => [1, ...grid.slice(1)];

describe('sweepBlocks', () => {
  for (const grid of [[5, 7, 9], [1, 4, 6], [11, 13], [3, 1]]) {
    test(`visits each block of any raster range of a [${grid.join('x')}] grid once, in raster order for full-width columns`, () => {
      const total = voxelCount(grid);
      const rng = new Rng(grid.length * 100 + total);
      const columns = [rasterColumn(grid), grid.map(() => 1), grid.map((g, axis) => (axis === 0 ? 1 : 1 + rng.int(g)))];
      for (const column of columns) {
        for (const count of [1, 2, 3, 7]) {
          for (let shard = 0; shard < count; shard++) {
            // The split of pipeline/shard.ts: contiguous raster ranges.
            const range = { start: Math.floor((shard * total) / count), end: Math.floor(((shard + 1) * total) / count) };
            const ordinals = [...sweepBlocks(grid, column, range)].map((index) => rasterOrdinal(index, grid));
            expect([...ordinals].sort((a, b) => a - b)).toEqual(Array.from({ length: range.end - range.start }, (_, i) => range.start + i));
            if (column.join() === rasterColumn(grid).join()) expect(ordinals).toEqual([...ordinals].sort((a, b) => a - b));
          }
        }
      }
      expect(() => [...sweepBlocks(grid, grid.map(() => 2))]).toThrow(RangeError);
    });
  }
});

test('ChunkCache counts distinct chunks: a chunk fetched again after eviction is one more miss, not one more chunk', async () => {
  const shape = [8, 12];
  const chunks = [4, 4];
  const reader: ChunkedArrayReader = {
    info: { url: 'memory://counted', shape, chunks, dtype: 'float32', axes: axesFor(2), placement: { scale: [1, 1], translation: [0, 0] } },
    readChunk: async (index) => new Float32Array(16).fill(index[0] * 10 + index[1]),
  };
  // Room for two chunks.
  const cache = new ChunkCache(2 * 16 * 4);
  for (const index of [[0, 0], [0, 1], [0, 2], [0, 0], [1, 2], [0, 0]]) expect((await cache.get(reader, index))[0]).toBe(index[0] * 10 + index[1]);
  expect(cache.stats).toMatchObject({ misses: 5, hits: 1, distinct: 4 });
});

describe('planBlockSweep', () => {
  test('its working set is honest: an LRU cache of that size fetches about as often as it estimates, raster order far more', () => {
    for (const [shape, chunks, core] of [
      [[24, 128, 128], [4, 4, 4], [8, 8, 8]],
      [[40, 96, 160], [8, 8, 8], [8, 16, 16]],
      [[256, 1280], [16, 16], [32, 32]],
    ] as Array<[number[], number[], number[]]>) {
      const plan = planTileGrid(shape as unknown as Shape, { sizeMultiple: 1, receptiveRadius: 3, tileShape: core, blendWidth: 0 });
      const unbounded = planBlockSweep(plan, chunks, Infinity);
      expect(unbounded.column).toEqual(rasterColumn(plan.grid));
      expect(unbounded.fetchesPerChunk).toBe(1);
      // A cache a third of raster order's working set.
      const cacheChunks = Math.floor(unbounded.workingSetChunks / 3);
      const sweep = planBlockSweep(plan, chunks, cacheChunks);
      expect(sweep.workingSetChunks).toBeLessThanOrEqual(cacheChunks);
      const swept = simulateFetchesPerChunk(plan, chunks, sweep.workingSetChunks, sweepBlocks(plan.grid, sweep.column));
      const raster = simulateFetchesPerChunk(plan, chunks, cacheChunks, sweepBlocks(plan.grid, rasterColumn(plan.grid)));
      console.log(`[${shape.join('x')}] in [${chunks.join('x')}] chunks, [${core.join('x')}] blocks, cache ${cacheChunks} chunks: column [${sweep.column.join('x')}] estimates ${sweep.fetchesPerChunk.toFixed(3)} fetches/chunk, simulated ${swept.toFixed(3)}; raster ${raster.toFixed(3)}`);
      // Alternating sweep directions share some face chunks: at most the estimate.
      expect(swept).toBeLessThanOrEqual(sweep.fetchesPerChunk + 1e-9);
      expect(raster).toBeGreaterThan(swept + 0.2);
      // A cache too small for any column: raster order, as before.
      expect(planBlockSweep(plan, chunks, 1).column).toEqual(rasterColumn(plan.grid));
    }
  });

  test('a realistic plan: 512x2048x2048 in 64^3 chunks at --max-memory 2GiB (default 3D U-Net)', () => {
    const cfg: UNetConfig = defaultUNetConfig(3);
    const model = buildUNet(cfg, 1);
    const geometry = unetGeometry(cfg);
    const shape = [512, 2048, 2048];
    const chunks = [64, 64, 64];
    const memory = planStreamMemory({
      maxMemoryBytes: parseByteSize('2GiB'),
      shape,
      inputChunks: chunks,
      sizeMultiple: geometry.sizeMultiple,
      receptiveRadius: geometry.receptiveRadius,
      bytesPerVoxel: estimateBytesPerVoxel(model, 3, geometry.sizeMultiple),
      modelWeightBytes: model.getWeights().reduce((n, w) => n + w.size * 4, 0),
      // The wasm backend's cap, as a 3D run would use.
      maxActivationBytes: 3 * 2 ** 30,
    });
    model.dispose();
    const plan = planTileGrid(shape as unknown as Shape, { ...geometry, tileShape: memory.coreShape, blendWidth: 0 });
    const cacheChunks = Math.floor(memory.cacheBytes / (voxelCount(chunks) * 4));
    const readAhead = (memory.readConcurrency + 1) * chunks.reduce((n, c, axis) => {
      const { first, last } = readChunkSpans(plan, axis, c);
      return n * Math.max(...Array.from(first, (f, k) => last[k] - f + 1));
    }, 1);
    const sweep = planBlockSweep(plan, chunks, cacheChunks - readAhead);
    const swept = simulateFetchesPerChunk(plan, chunks, cacheChunks, sweepBlocks(plan.grid, sweep.column));
    const raster = simulateFetchesPerChunk(plan, chunks, cacheChunks, sweepBlocks(plan.grid, rasterColumn(plan.grid)));
    console.log(
      `512x2048x2048 at 2GiB: blocks [${memory.coreShape.join('x')}] (grid ${plan.grid.join('x')}), cache ${cacheChunks} chunks of 1 MiB: ` +
        `raster ${raster.toFixed(3)} fetches/chunk, column [${sweep.column.join('x')}] ${swept.toFixed(3)} (estimate ${sweep.fetchesPerChunk.toFixed(3)})`,
    );
    expect(raster).toBeGreaterThan(2);
    expect(swept).toBeLessThan(1.1);
  });
});

// ---------------------------------------------------------------------------------------------
// Real runs on an on-disk Zarr.

const normalisation: Normalisation = { mode: 'meanstd', offset: 1000, scale: 200 };
// No pooling: the order, not the model, is under test; a 3D conv on the cpu backend is fast at this size.
const tinyNet = (dims: 2 | 3): UNetConfig => ({ ...defaultUNetConfig(dims), depth: 0, filters: 2, kernelSize: 3, batchNorm: false, variant: 'n2v' });


async function writeInputZarr(url: string, shape: number[], chunks: number[], seed: number): Promise<ChunkedArrayReader> {
  const writer = await createOmeZarr(url, { shape, chunks, dtype: 'uint16', axes: axesFor(shape.length), placement: { scale: shape.map(() => 1), translation: shape.map(() => 0) } });
  const rng = new Rng(seed);
  const grid = chunks.map((c, axis) => Math.ceil(shape[axis] / c));
  const indices = sweepBlocks(grid, rasterColumn(grid));
  // Several writes at once: each is a small file written and renamed.
  const writeSome = async (): Promise<void> => {
    for (let next = indices.next(); !next.done; next = indices.next()) {
      const index = next.value;
      // Smooth across chunks plus noise, integers (uint16).
      const values = new Float32Array(voxelCount(chunks));
      for (let i = 0; i < values.length; i++) values[i] = Math.round(1000 + 50 * Math.sin(index.reduce((sum, k) => sum + k, 0) / 3) + 200 * rng.normal());
      await writer.writeChunk(index, values);
    }
  };
  await Promise.all(Array.from({ length: 8 }, writeSome));
  await writer.close?.();
  return openChunkedSource(url);
}

interface Run {
  output: OmeZarrWriter;
  results: DenoiseChunkedResult[];
  done: Array<Extract<StreamDenoiseEvent, { type: 'stream-done' }>>;
}

/** Denoises `input` into a new OME-Zarr at `url` with a cache of `cacheBytes`; `shards` > 1 runs the shards one after the other. */
async function denoiseTo(
  input: ChunkedArrayReader,
  url: string,
  opts: { blocks: number[]; cacheBytes: number; order?: 'sweep' | 'raster'; shards?: number; abortAfter?: number; resume?: boolean },
): Promise<Run> {
  const dims = input.info.shape.length as 2 | 3;
  const cfg = tinyNet(dims);
  const geometry = unetGeometry(cfg);
  const output = await createOmeZarr(url, { shape: [...input.info.shape], chunks: opts.blocks, dtype: 'float32', axes: axesFor(dims), placement: input.info.placement });
  const store = openByteStore(url);
  const bytesPerVoxel = 64;
  // The budget that leaves exactly `cacheBytes` to the cache: the memory plan's own split, not a hook.
  const generous = planStreamMemory({ maxMemoryBytes: parseByteSize('1GiB'), shape: input.info.shape, inputChunks: input.info.chunks, ...geometry, bytesPerVoxel, modelWeightBytes: 0, coreShape: opts.blocks });
  const maxMemoryBytes = generous.totalBytes - generous.cacheBytes + opts.cacheBytes;
  const results: DenoiseChunkedResult[] = [];
  const done: Run['done'] = [];
  const count = opts.shards ?? 1;
  for (let index = 0; index < count; index++) {
    const model = buildUNet(cfg, 5);
    const controller = new AbortController();
    let written = 0;
    try {
      results.push(
        await denoiseChunked({
          input,
          output,
          model,
          ...geometry,
          normalisation,
          maxMemoryBytes,
          bytesPerVoxel,
          modelWeightBytes: 0,
          order: opts.order,
          journal: { store, fingerprint: runFingerprint({ cfg, seed: 5 }) },
          resume: opts.resume,
          signal: controller.signal,
          ...(count > 1 ? { shard: { index, count } } : {}),
          onEvent: (e) => {
            if (e.type === 'stream-done') done.push(e);
            if (e.type === 'chunk' && ++written === opts.abortAfter) controller.abort();
          },
        }),
      );
    } finally {
      model.dispose();
    }
  }
  expect(results.every((r) => r.memory.cacheBytes === opts.cacheBytes)).toBe(true);
  return { output, results, done };
}

/** Every stored chunk of `a` equals `b`'s, byte for byte; returns the number compared. */
async function expectSameChunks(a: OmeZarrWriter, b: OmeZarrWriter): Promise<number> {
  const grid = a.info.shape.map((n, axis) => Math.ceil(n / a.info.chunks[axis]));
  let compared = 0;
  let differing = 0;
  for (const index of sweepBlocks(grid, rasterColumn(grid))) {
    const x = await a.readStoredChunk(index);
    const y = await b.readStoredChunk(index);
    expect(x).not.toBeNull();
    if (!x || !y || Buffer.compare(Buffer.from(x), Buffer.from(y)) !== 0) differing++;
    compared++;
  }
  expect(differing).toBe(0);
  return compared;
}

const fetchesPerChunk = (run: Run): number => run.results.reduce((n, r) => n + r.cache.misses, 0) / run.results.reduce((n, r) => n + r.cache.distinct, 0);

describe('streaming denoise of an on-disk Zarr', () => {
  test('3D: a layer of halo chunks does not fit in the cache; the sweep fetches each chunk about once, raster order ~1.7 times; same bytes; 2 shards too', async () => {
    const shape = [32, 96, 96];
    const inputChunks = [4, 4, 4];
    const blocks = [8, 16, 16];
    const input = await writeInputZarr(path.join(tmp, 'in3.zarr'), shape, inputChunks, 3);
    const chunkBytes = voxelCount(inputChunks) * 4;
    // A layer of blocks reads 4 x 24 x 24 = 2304 chunks; columns of 3 x 3 blocks need 4 x 13 x 13 + 2 x 10 x 13
    // = 936 beside the 5 tiles read ahead (5 x 4 x 6 x 6 = 720).
    const cacheChunks = 1656;
    const cacheBytes = cacheChunks * chunkBytes;
    const raster = await denoiseTo(input, path.join(tmp, 'raster3.zarr'), { blocks, cacheBytes, order: 'raster' });
    const swept = await denoiseTo(input, path.join(tmp, 'sweep3.zarr'), { blocks, cacheBytes });
    const sharded = await denoiseTo(input, path.join(tmp, 'shards3.zarr'), { blocks, cacheBytes, shards: 2 });
    const sweep = swept.results[0].sweep;
    console.log(
      `3D [${shape.join('x')}] in [${inputChunks.join('x')}] chunks (${voxelCount(shape.map((n, a) => n / inputChunks[a]))}), [${blocks.join('x')}] blocks, cache ${cacheChunks} chunks: ` +
        `raster ${fetchesPerChunk(raster).toFixed(3)} fetches/chunk, column [${sweep.column.join('x')}] ${fetchesPerChunk(swept).toFixed(3)} (estimate ${sweep.fetchesPerChunk.toFixed(3)}), ` +
        `2 shards ${sharded.results.map((r) => (r.cache.misses / r.cache.distinct).toFixed(3)).join(' and ')}; ${swept.done[0].seconds.toFixed(1)} s per run`,
    );
    expect(raster.results[0].sweep.column).toEqual([1, 6, 6]);
    expect(sweep.column).toEqual([1, 3, 3]);
    expect(fetchesPerChunk(raster)).toBeGreaterThan(1.5);
    // Raster order's estimate without reuse between layers: 3 + 4 + 4 + 3 of the 8 layers of chunks.
    expect(raster.results[0].sweep.fetchesPerChunk).toBe(14 / 8);
    expect(fetchesPerChunk(raster)).toBeLessThanOrEqual(14 / 8);
    // 2 x 2 columns of 3 x 3 blocks, 12 chunks + 1 of halo wide: (26 / 24)^2 = 1.17 fetches per chunk, less
    // where consecutive columns (swept up, then down) meet at the same layer.
    expect(sweep.fetchesPerChunk).toBeCloseTo((26 / 24) ** 2, 12);
    expect(fetchesPerChunk(swept)).toBeLessThanOrEqual(sweep.fetchesPerChunk);
    expect(swept.done[0].fetchesPerChunk).toBeCloseTo(fetchesPerChunk(swept), 12);
    expect(swept.results[0].cache.distinct).toBe(voxelCount(shape.map((n, a) => n / inputChunks[a])));
    // Shards: each its own raster range, each swept (the boundary plane is read by both).
    for (const r of sharded.results) expect(r.cache.misses / r.cache.distinct).toBeLessThanOrEqual(sweep.fetchesPerChunk);
    expect(sharded.results[1].allComplete).toBe(true);
    expect(await expectSameChunks(swept.output, raster.output)).toBe(4 * 6 * 6);
    expect(await expectSameChunks(sharded.output, raster.output)).toBe(4 * 6 * 6);
  });

  test('2D: an ample cache keeps raster order; with a small one the sweep fetches each chunk about once, raster order ~1.7 times; same bytes, also interrupted and resumed', async () => {
    const shape = [128, 1024];
    const inputChunks = [8, 8];
    const blocks = [16, 64];
    const input = await writeInputZarr(path.join(tmp, 'in2.zarr'), shape, inputChunks, 4);
    const chunkBytes = voxelCount(inputChunks) * 4;
    const ample = 4000 * chunkBytes;
    // A row of blocks reads 4 x 128 = 512 chunks.
    const small = 400 * chunkBytes;
    const sweptAmple = await denoiseTo(input, path.join(tmp, 'sweep2a.zarr'), { blocks, cacheBytes: ample });
    const rasterSmall = await denoiseTo(input, path.join(tmp, 'raster2s.zarr'), { blocks, cacheBytes: small, order: 'raster' });
    const sweptSmall = await denoiseTo(input, path.join(tmp, 'sweep2s.zarr'), { blocks, cacheBytes: small });
    console.log(
      `2D [${shape.join('x')}] in [${inputChunks.join('x')}] chunks, [${blocks.join('x')}] blocks: cache 4000 chunks: ` +
        `column [${sweptAmple.results[0].sweep.column.join('x')}] ${fetchesPerChunk(sweptAmple).toFixed(3)}; cache 400 chunks: raster ${fetchesPerChunk(rasterSmall).toFixed(3)}, ` +
        `column [${sweptSmall.results[0].sweep.column.join('x')}] ${fetchesPerChunk(sweptSmall).toFixed(3)}`,
    );
    // Raster order is the sweep's choice when a row of halo chunks fits.
    expect(sweptAmple.results[0].sweep.column).toEqual([1, 16]);
    expect(fetchesPerChunk(sweptAmple)).toBe(1);
    expect(fetchesPerChunk(rasterSmall)).toBeGreaterThan(1.5);
    expect(fetchesPerChunk(sweptSmall)).toBeLessThanOrEqual(sweptSmall.results[0].sweep.fetchesPerChunk);
    expect(fetchesPerChunk(sweptSmall)).toBeLessThan(1.1);
    // Interrupted in sweep order and resumed: the journal is keyed by chunk, so only the rest is computed.
    const stopped = await denoiseTo(input, path.join(tmp, 'resumed2s.zarr'), { blocks, cacheBytes: small, abortAfter: 50 });
    expect(stopped.results[0].interrupted).toBe(true);
    const resumed = await denoiseTo(input, path.join(tmp, 'resumed2s.zarr'), { blocks, cacheBytes: small, resume: true });
    expect(resumed.results[0].chunksSkipped).toBe(stopped.results[0].chunksWritten);
    expect(resumed.results[0].chunksWritten).toBe(8 * 16 - stopped.results[0].chunksWritten);
    for (const run of [rasterSmall, sweptSmall, resumed]) expect(await expectSameChunks(run.output, sweptAmple.output)).toBe(8 * 16);
  });
});
