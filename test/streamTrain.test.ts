import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import { promises as fs } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { lastValueFrom, range, toArray } from 'rxjs';
import { initBackend } from '../backend/select.js';
import { Rng } from '../core/rng.js';
import { syntheticCells, addGaussianNoise } from '../core/synthetic.js';
import { voxelCount, type Shape } from '../core/volume.js';
import { InputError, UsageError } from '../core/errors.js';
import { computeNormalisation, denormalise, percentileOfSorted } from '../models/normalise.js';
import { readManifest } from '../models/io.js';
import type { ArrayInfo, ChunkedArrayReader } from '../storage/chunked.js';
import { ChunkCache } from '../storage/chunkCache.js';
import { createOmeZarr } from '../storage/ome.js';
import { openChunkedSource } from '../storage/open.js';
import { mixSeed } from '../operators/samplePatches.js';
import { defaultRegionChunks, defaultMaxRegionBytes, sampleRegions, type RegionEvent, type RegionSamplingStats } from '../operators/sampleRegions.js';
import { sampleNormalisation } from '../pipeline/sampleNormalisation.js';
import { trainModel, TrainingInterrupted, type TrainEvent, type TrainOptions } from '../pipeline/train.js';

/**
 * A YX or ZYX array that exists only as a rule: each chunk is synthetic cells (x100) plus Gaussian
 * noise (sigma 15) generated from (seed, chunk index) when read. Nothing ever holds the whole
 * array. Counts reads per chunk. Chunks where `dark(index)` holds are noise around 0 (background).
 * Edge chunks are padded with `fill` (a value no statistic may see).
 */
class SyntheticChunkedReader implements ChunkedArrayReader {
  readonly info: ArrayInfo;
  readonly readsPerChunk = new Map<string, number>();
  reads = 0;
  constructor(
    shape: number[],
    chunks: number[],
    private readonly seed: number,
    private readonly opts: { dark?: (index: readonly number[]) => boolean; fill?: number; delayMs?: number } = {},
  ) {
    const names = shape.length === 3 ? ['z', 'y', 'x'] : ['y', 'x'];
    this.info = {
      url: `synthetic://${shape.join('x')}`,
      shape,
      chunks,
      dtype: 'float32',
      axes: names.map((name) => ({ name, type: 'space' as const })),
      placement: { scale: shape.map(() => 1), translation: shape.map(() => 0) },
    };
  }

  async readChunk(index: readonly number[]): Promise<Float32Array> {
    const key = index.join(',');
    this.readsPerChunk.set(key, (this.readsPerChunk.get(key) ?? 0) + 1);
    this.reads++;
    if (this.opts.delayMs) await new Promise((resolve) => setTimeout(resolve, this.opts.delayMs));
    return this.generate(index);
  }

  /** The chunk's values without counting a read (for exact reference statistics). */
  generate(index: readonly number[]): Float32Array {
    const c3 = this.info.chunks.length === 2 ? [1, ...this.info.chunks] : [...this.info.chunks];
    const rng = new Rng(mixSeed(this.seed, index.reduce((h, i) => h * 1009 + i, 7), 0));
    const dark = this.opts.dark?.(index) ?? false;
    const cells = syntheticCells(c3 as unknown as [number, number, number], rng, { blobs: Math.max(1, Math.round((c3[1] * c3[2]) / 150)), filaments: 2 });
    const clean = cells.data.map((v) => (dark ? 0 : v * 100));
    const values = addGaussianNoise(clean, 15, rng);
    // Padding outside the array.
    const start = index.map((c, a) => c * this.info.chunks[a]);
    const s3 = start.length === 2 ? [0, ...start] : start;
    const n3 = this.info.shape.length === 2 ? [1, ...this.info.shape] : [...this.info.shape];
    for (let z = 0; z < c3[0]; z++)
      for (let y = 0; y < c3[1]; y++)
        for (let x = 0; x < c3[2]; x++) {
          if (s3[0] + z >= n3[0] || s3[1] + y >= n3[1] || s3[2] + x >= n3[2]) values[(z * c3[1] + y) * c3[2] + x] = this.opts.fill ?? 1e6;
        }
    return values;
  }

  /** The whole array, assembled for reference statistics on small test arrays only. */
  materialise(): Float32Array {
    const shape = this.info.shape.length === 2 ? [1, ...this.info.shape] : [...this.info.shape];
    const chunks = this.info.chunks.length === 2 ? [1, ...this.info.chunks] : [...this.info.chunks];
    const out = new Float32Array(voxelCount(shape));
    for (let cz = 0; cz * chunks[0] < shape[0]; cz++)
      for (let cy = 0; cy * chunks[1] < shape[1]; cy++)
        for (let cx = 0; cx * chunks[2] < shape[2]; cx++) {
          const values = this.generate(this.info.shape.length === 2 ? [cy, cx] : [cz, cy, cx]);
          for (let z = 0; z < chunks[0] && cz * chunks[0] + z < shape[0]; z++)
            for (let y = 0; y < chunks[1] && cy * chunks[1] + y < shape[1]; y++)
              for (let x = 0; x < chunks[2] && cx * chunks[2] + x < shape[2]; x++) {
                out[((cz * chunks[0] + z) * shape[1] + cy * chunks[1] + y) * shape[2] + cx * chunks[2] + x] = values[(z * chunks[1] + y) * chunks[2] + x];
              }
        }
    return out;
  }
}

const identity = { mode: 'meanstd' as const, offset: 0, scale: 1 };

function chunksOf(e: RegionEvent): string[] {
  const out: string[] = [];
  const walk = (axis: number, prefix: number[]): void => {
    if (axis === e.chunkCounts.length) out.push(prefix.join(','));
    else for (let i = 0; i < e.chunkCounts[axis]; i++) walk(axis + 1, [...prefix, e.firstChunk[axis] + i]);
  };
  walk(0, []);
  return out;
}

let tmp: string;
beforeAll(async () => {
  await initBackend({ backend: 'wasm' });
  tmp = await fs.mkdtemp(path.join(os.tmpdir(), 'blindspot-stream-train-'));
});
afterAll(async () => {
  await fs.rm(tmp, { recursive: true, force: true });
});

describe('sampleRegions (patches from chunk-aligned regions)', () => {
  it('reads each region chunk once through the cache, cuts several patches per region, and is deterministic per (seed, step)', async () => {
    for (const [shape, chunks, patch] of [
      [[300, 260], [32, 32], [32, 32]],
      [[40, 100, 90], [8, 16, 16], [8, 16, 16]],
    ] as Array<[number[], number[], number[]]>) {
      const reader = new SyntheticChunkedReader(shape, chunks, 3);
      const cache = new ChunkCache(64 * 2 ** 20);
      const regions: RegionEvent[] = [];
      const stats: RegionSamplingStats = { regions: 0, patchesDrawn: 0, backgroundSkipped: 0 };
      const opts = { sources: [{ reader, name: 'synthetic' }], cache, patchShape: patch as unknown as Shape, patchesPerStep: 8, patchesPerRegion: 4, normalisation: identity, seed: 5 };
      const patches = await lastValueFrom(range(0, 12).pipe(sampleRegions({ ...opts, stats, onRegion: (e) => regions.push(e) }), toArray()));
      expect(patches.length).toBe(96);
      expect(patches.map((p) => `${p.step}/${p.index}`)).toEqual(Array.from({ length: 96 }, (_, i) => `${Math.floor(i / 8)}/${i % 8}`));
      for (const p of patches) expect(p.data.length).toBe(voxelCount(patch));
      // Two regions per step; a region spans two patches per axis (2 chunks of this size).
      expect(regions.length).toBe(24);
      for (const r of regions) expect(r.chunkCounts).toEqual(patch.map((p, a) => Math.ceil((2 * p) / chunks[a])));
      const regionChunkTotal = regions.reduce((n, r) => n + chunksOf(r).length, 0);
      // The cache holds everything here: every chunk is read exactly once, however many regions and patches use it.
      const distinct = new Set(regions.flatMap(chunksOf));
      expect(reader.reads).toBe(distinct.size);
      expect(reader.reads).toBeLessThanOrEqual(regionChunkTotal);
      for (const n of reader.readsPerChunk.values()) expect(n).toBe(1);
      expect(cache.stats.hits).toBeGreaterThanOrEqual(96);
      // Each patch really is the array at some position inside its region.
      const whole = reader.materialise();
      const p0 = patches[0];
      const r0 = regions[0];
      let found = false;
      const s3 = shape.length === 2 ? [1, ...shape] : shape;
      const q3 = patch.length === 2 ? [1, ...patch] : patch;
      const lo = r0.firstChunk.map((c, a) => c * chunks[a]);
      const lo3 = lo.length === 2 ? [0, ...lo] : lo;
      for (let z = lo3[0]; z + q3[0] <= s3[0] && z < lo3[0] + 2 * q3[0] && !found; z++)
        for (let y = lo3[1]; y + q3[1] <= s3[1] && y < lo3[1] + 2 * q3[1] && !found; y++)
          for (let x = lo3[2]; x + q3[2] <= s3[2] && x < lo3[2] + 2 * q3[2] && !found; x++)
            found = p0.data[0] === whole[(z * s3[1] + y) * s3[2] + x] && p0.data[q3[2] - 1] === whole[(z * s3[1] + y) * s3[2] + x + q3[2] - 1];
      expect(found).toBe(true);

      // A run resumed at step 7 (fresh cache) draws exactly the patches of the uninterrupted run.
      const again = await lastValueFrom(range(7, 1).pipe(sampleRegions({ ...opts, cache: new ChunkCache(64 * 2 ** 20) }), toArray()));
      again.forEach((p, i) => {
        expect(p.data).toEqual(patches[56 + i].data);
        expect(p.rng.nextUint32()).toBe(new Rng(mixSeed(5, 7, i)).nextUint32());
      });
    }
  });

  it('keeps the cache within its byte bound when regions outnumber it', async () => {
    const reader = new SyntheticChunkedReader([512, 512], [32, 32], 4);
    const regionBytes = 4 /* chunks */ * 32 * 32 * 4; /* bytes per value */
    const cache = new ChunkCache(8 * regionBytes);
    await lastValueFrom(range(0, 20).pipe(sampleRegions({ sources: [{ reader, name: 's' }], cache, patchShape: [32, 32], patchesPerStep: 8, patchesPerRegion: 4, normalisation: identity, seed: 1 }), toArray()));
    expect(cache.stats.peakBytes).toBeLessThanOrEqual(8 * regionBytes);
    expect(cache.stats.evictions).toBeGreaterThan(0);
    // Still one read per chunk per region that needs it: at most 4 chunks per region, 2 regions per step.
    expect(reader.reads).toBeLessThanOrEqual(20 * 2 * 4);
  });

  it('skips background patches below the threshold, and gives up clearly when nearly everything is background', async () => {
    // Left half of the chunks dark (noise around 0), right half cells (background level 5, blobs up to 100).
    const reader = new SyntheticChunkedReader([256, 256], [32, 32], 6, { dark: (i) => i[1] < 4 });
    const stats: RegionSamplingStats = { regions: 0, patchesDrawn: 0, backgroundSkipped: 0 };
    const threshold = 3;
    const patches = await lastValueFrom(
      range(0, 10).pipe(
        sampleRegions({
          sources: [{ reader, name: 's' }],
          cache: new ChunkCache(32 * 2 ** 20),
          patchShape: [32, 32],
          patchesPerStep: 8,
          normalisation: { mode: 'meanstd', offset: 10, scale: 20 },
          seed: 2,
          background: { threshold },
          stats,
        }),
        toArray(),
      ),
    );
    expect(patches.length).toBe(80);
    expect(stats.backgroundSkipped).toBeGreaterThan(10);
    expect(stats.patchesDrawn).toBe(80 + stats.backgroundSkipped);
    for (const p of patches) {
      const raw = denormalise(p.data, { mode: 'meanstd', offset: 10, scale: 20 });
      expect(raw.reduce((a, b) => a + b, 0) / raw.length).toBeGreaterThanOrEqual(threshold - 1e-3);
    }
    const allDark = new SyntheticChunkedReader([256, 256], [32, 32], 6, { dark: () => true });
    const err = await lastValueFrom(
      range(0, 100).pipe(
        sampleRegions({ sources: [{ reader: allDark, name: 'dark.zarr' }], cache: new ChunkCache(32 * 2 ** 20), patchShape: [32, 32], patchesPerStep: 8, normalisation: identity, seed: 2, background: { threshold } }),
      ),
    ).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(InputError);
    expect((err as Error).message).toMatch(/dark\.zarr: .*background.*threshold 3/);
  });
});

describe('defaultRegionChunks', () => {
  it('spans two patches per axis, and shrinks big regions toward one patch plus half a chunk', () => {
    expect(defaultRegionChunks([32, 32], [32, 32])).toEqual([2, 2]);
    expect(defaultRegionChunks([16, 64, 64], [32, 64, 64])).toEqual([4, 2, 2]);
    // One 1024x1024 TIFF page per z: 64 pages of 4 MiB would be 256 MiB; the floor is 32 pages.
    const pages = defaultRegionChunks([1, 1024, 1024], [32, 64, 64]);
    expect(pages).toEqual([32, 1, 1]);
    // Shrinks only as far as needed.
    const mid = defaultRegionChunks([2, 600, 600], [32, 64, 64]);
    expect(mid[0]).toBeLessThan(32);
    expect(mid[0]).toBeGreaterThan(17);
    expect(4 * mid[0] * 2 * 600 * 600).toBeLessThanOrEqual(defaultMaxRegionBytes);
    expect(4 * (mid[0] + 1) * 2 * 600 * 600).toBeGreaterThan(defaultMaxRegionBytes);
  });
});

describe('sampleNormalisation (statistics from a sample of chunks)', () => {
  it('matches exact statistics when it reads every chunk, within the sketch bound for percentiles, ignoring chunk padding', async () => {
    const reader = new SyntheticChunkedReader([150, 140], [32, 32], 8, { fill: 1e6 });
    const whole = reader.materialise();
    const exactMeanStd = computeNormalisation([{ data: whole, shape: [150, 140], sampleType: 'float32' }], 'meanstd');
    const streamed = await sampleNormalisation([{ reader, name: 's' }], 'meanstd');
    expect(streamed.chunksRead).toBe(streamed.chunksTotal);
    expect(streamed.chunksTotal).toBe(25);
    expect(reader.reads).toBe(25);
    expect(streamed.valuesSeen).toBe(150 * 140);
    expect(Math.abs(streamed.normalisation.offset - exactMeanStd.offset)).toBeLessThan(1e-9 * Math.abs(exactMeanStd.offset) + 1e-9);
    expect(Math.abs(streamed.normalisation.scale - exactMeanStd.scale) / exactMeanStd.scale).toBeLessThan(1e-9);

    // A sketch smaller than the data: percentiles within the stated rank error of exact.
    const sorted = whole.slice().sort();
    const pct = await sampleNormalisation([{ reader, name: 's' }], 'percentile', { sketchCapacity: 4096, seed: 3 });
    expect(pct.rankErrorBound).toBeGreaterThan(0);
    const n = pct.normalisation;
    const rankOf = (v: number): [number, number] => {
      let below = 0;
      let atOrBelow = 0;
      for (const x of sorted) {
        if (x < v) below++;
        if (x <= v) atOrBelow++;
      }
      return [below / sorted.length, atOrBelow / sorted.length];
    };
    for (const [value, p] of [
      [n.offset, 2],
      [n.offset + n.scale, 99.8],
    ]) {
      const [below, atOrBelow] = rankOf(value);
      const q = p / 100;
      expect(q).toBeGreaterThanOrEqual(below - pct.rankErrorBound - 1 / sorted.length);
      expect(q).toBeLessThanOrEqual(atOrBelow + pct.rankErrorBound + 1 / sorted.length);
    }
    // All values held: exact percentiles (numpy interpolation).
    const exactPct = await sampleNormalisation([{ reader, name: 's' }], 'percentile');
    expect(exactPct.normalisation.offset).toBe(percentileOfSorted(sorted, 2));
    expect(exactPct.normalisation.offset + exactPct.normalisation.scale).toBeCloseTo(percentileOfSorted(sorted, 99.8), 3);
  });

  it('reads only the sampled chunks of a large array, each once, reproducibly', async () => {
    const reader = new SyntheticChunkedReader([64, 4096, 4096], [16, 64, 64], 9); // 17 G values, never materialised
    const a = await sampleNormalisation([{ reader, name: 'big' }], 'percentile', { sampleValues: 40 * 16 * 64 * 64, seed: 4 });
    expect(a.chunksRead).toBe(40);
    expect(a.chunksTotal).toBe(4 * 64 * 64);
    expect(reader.reads).toBe(40);
    expect(new Set(reader.readsPerChunk.keys()).size).toBe(40);
    const b = await sampleNormalisation([{ reader, name: 'big' }], 'percentile', { sampleValues: 40 * 16 * 64 * 64, seed: 4 });
    expect(b.normalisation).toEqual(a.normalisation);
    // Sampled chunks of cells (background 5, blobs to 100, noise 15): plausible percentiles.
    expect(a.normalisation.offset).toBeLessThan(0);
    expect(a.normalisation.offset + a.normalisation.scale).toBeGreaterThan(50);
  });
});

describe('streaming training (trainModel with chunked sources)', () => {
  it('trains from a reader that is never materialised: loss falls, reads bounded, producer <= K batches ahead, normalisation stored', async () => {
    const reader = new SyntheticChunkedReader([320, 256], [32, 32], 12, { delayMs: 1 });
    const regions: RegionEvent[] = [];
    const events: TrainEvent[] = [];
    let produced = 0;
    let trained = 0;
    let maxAhead = 0;
    const ahead = 3;
    const out = path.join(tmp, 'stream');
    const manifest = await trainModel({
      sources: [{ reader, name: 'synthetic.zarr' }],
      out,
      steps: 60,
      batchSize: 8,
      patchShape: [32, 32],
      network: { depth: 2, filters: 8, kernelSize: 3, batchNorm: true },
      learningRate: 2e-3,
      validateEvery: 15,
      valPatches: 16,
      seed: 3,
      aheadBatches: ahead,
      streaming: { patchesPerRegion: 4, onRegion: (e) => regions.push(e) },
      onBatchReady: () => {
        produced++;
        maxAhead = Math.max(maxAhead, produced - trained);
      },
      onEvent: (e) => {
        events.push(e);
        if (e.type === 'step') trained++;
      },
    });
    // Backpressure: the producer (fast, in-memory chunks) fills the queue up to K and never beyond.
    expect(maxAhead).toBe(ahead);
    expect(produced).toBe(60);

    // Loss falls.
    const vals = manifest.history.filter((h) => h.valLoss !== undefined).map((h) => h.valLoss!);
    expect(vals.length).toBe(4);
    expect(Math.min(...vals.slice(1))).toBeLessThan(vals[0]);
    const losses = manifest.history.map((h) => h.loss);
    const mean = (xs: number[]): number => xs.reduce((a, b) => a + b, 0) / xs.length;
    expect(mean(losses.slice(-10))).toBeLessThan(mean(losses.slice(0, 5)));

    // Reads: the normalisation sample plus at most one read per chunk per region (cache hits for the rest).
    const norm = events.find((e) => e.type === 'normalisation');
    if (norm?.type !== 'normalisation') throw new Error('no normalisation event');
    const regionChunkReads = regions.reduce((n, r) => n + chunksOf(r).length, 0);
    expect(regions.length).toBe(60 * 2 + (16 / 8) * 2);
    expect(reader.reads).toBeLessThanOrEqual(norm.chunksRead + regionChunkReads);
    expect(reader.reads).toBeLessThan(norm.chunksRead + regionChunkReads / 2); // regions overlap: most chunks come from the cache

    // Validation: a chunk-aligned slab at the end of Y that training regions never touch.
    expect(manifest.training.validationInputs).toEqual(['synthetic.zarr (validation slab)']);
    const slabFirstChunk = 10 - 1; // 10 chunk rows, 10% held out
    for (const r of regions) {
      const rows = Array.from({ length: r.chunkCounts[0] }, (_, i) => r.firstChunk[0] + i);
      const isValidation = r.source.endsWith('(validation slab)');
      for (const row of rows) expect(row >= slabFirstChunk).toBe(isValidation);
    }

    // The model folder stores the sampled normalisation.
    const stored = await readManifest(out);
    expect(stored.normalisation).toEqual({ mode: norm.mode, offset: norm.offset, scale: norm.scale });
    expect(stored.normalisation.scale).toBeGreaterThan(1);
    expect(stored.training.finished).toBe(true);
  }, 240_000);

  it('a streamed run interrupted and resumed follows the uninterrupted trajectory (same regions and patches per step)', async () => {
    const options = (out: string, extra: Partial<TrainOptions> = {}): TrainOptions => ({
      sources: [{ reader: new SyntheticChunkedReader([256, 256], [32, 32], 21), name: 'synthetic.zarr' }],
      out,
      steps: 30,
      batchSize: 8,
      patchShape: [32, 32],
      network: { depth: 2, filters: 8, kernelSize: 3, batchNorm: true },
      learningRate: 2e-3,
      validateEvery: 10,
      valPatches: 8,
      normalisation: 'percentile',
      seed: 4,
      streaming: { patchesPerRegion: 4, maxMemoryBytes: 8 * 2 ** 20 },
      ...extra,
    });
    const whole = await trainModel(options(path.join(tmp, 'stream-whole')));
    const out = path.join(tmp, 'stream-resume');
    const controller = new AbortController();
    await expect(
      trainModel(
        options(out, {
          signal: controller.signal,
          onEvent: (e) => {
            if (e.type === 'step' && e.step === 13) controller.abort();
          },
        }),
      ),
    ).rejects.toBeInstanceOf(TrainingInterrupted);
    const resumed = await trainModel(options(out, { resume: true }));
    expect(resumed.history.length).toBe(whole.history.length);
    resumed.history.forEach((h, i) => {
      expect(h.step).toBe(whole.history[i].step);
      expect(h.loss).toBeCloseTo(whole.history[i].loss, 4);
    });
    expect(resumed.normalisation).toEqual(whole.normalisation);
    expect(resumed.normalisation.mode).toBe('percentile');

    // A memory budget that leaves the cache less than one step's regions is refused before any read.
    const tooSmall = options(path.join(tmp, 'stream-small'), { streaming: { maxMemoryBytes: 4 * 2 ** 20 } });
    const err = await trainModel(tooSmall).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(UsageError);
    expect((err as Error).message).toMatch(/--max-memory 4\.0 MiB is too small: .* one training step's chunks/);
  }, 240_000);
});

describe('streaming training from a real Zarr source', () => {
  it('trains from an OME-Zarr v0.5 volume opened with openChunkedSource; statistics equal those of the same values from memory', async () => {
    const shape = [224, 180];
    const chunks = [32, 32];
    const synthetic = new SyntheticChunkedReader(shape, chunks, 31);
    const url = path.join(tmp, 'vol.zarr');
    const writer = await createOmeZarr(url, {
      shape,
      chunks,
      dtype: 'float32',
      axes: [
        { name: 'y', type: 'space', unit: 'micrometer' },
        { name: 'x', type: 'space', unit: 'micrometer' },
      ],
      placement: { scale: [1, 1], translation: [0, 0] },
    });
    for (let cy = 0; cy * chunks[0] < shape[0]; cy++) for (let cx = 0; cx * chunks[1] < shape[1]; cx++) await writer.writeChunk([cy, cx], synthetic.generate([cy, cx]));
    await writer.close?.();
    const reader = await openChunkedSource(url);
    expect([...reader.info.shape]).toEqual(shape);
    const events: TrainEvent[] = [];
    const manifest = await trainModel({
      sources: [{ reader, name: url }],
      out: path.join(tmp, 'zarr-model'),
      steps: 12,
      batchSize: 8,
      patchShape: [32, 32],
      network: { depth: 2, filters: 8, kernelSize: 3, batchNorm: true },
      learningRate: 2e-3,
      validateEvery: 6,
      valPatches: 8,
      seed: 2,
      onEvent: (e) => events.push(e),
    });
    await reader.close?.();
    expect(manifest.training.stepsDone).toBe(12);
    expect(manifest.training.inputs).toEqual([url]);
    // Same values in memory (the synthetic rule), same training bounds: identical statistics.
    const trainBounds = { start: [0, 0], end: [192, 180] }; // 7 chunk rows, the last (rows 192..224, one patch thick) held out
    expect(manifest.training.validationInputs).toEqual([`${url} (validation slab)`]);
    const reference = await sampleNormalisation([{ reader: synthetic, name: 'memory', bounds: trainBounds }], 'meanstd');
    expect(manifest.normalisation.offset).toBeCloseTo(reference.normalisation.offset, 5);
    expect(manifest.normalisation.scale).toBeCloseTo(reference.normalisation.scale, 5);
    expect(events.some((e) => e.type === 'normalisation')).toBe(true);
  }, 120_000);
});

