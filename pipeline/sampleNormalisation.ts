/**
 * Normalisation statistics of chunked arrays larger than memory, from a seeded random sample of
 * their chunks (core/quantiles.ts for the percentiles): what streamed training normalises by.
 */
import { InputError } from '../core/errors.js';
import { Rng } from '../core/rng.js';
import { QuantileSketch, RunningMoments, defaultSketchCapacity } from '../core/quantiles.js';
import { voxelCount } from '../core/volume.js';
import { defaultPercentiles, type Normalisation } from '../models/normalise.js';
import type { Box, ChunkedSource } from '../operators/sampleRegions.js';

export interface SampledNormalisation {
  normalisation: Normalisation;
  chunksRead: number;
  chunksTotal: number;
  valuesSeen: number;
  /** Rank error bound of the percentiles over the values seen (0: exact over them), at delta 1e-3. */
  rankErrorBound: number;
}

export interface SampleNormalisationOptions {
  pLow?: number;
  pHigh?: number;
  seed?: number;
  /** Values to read (whole chunks, cropped to the bounds); default 2^24. Every chunk when the sources hold fewer. */
  sampleValues?: number;
  sketchCapacity?: number;
  readConcurrency?: number;
}

/**
 * Normalisation statistics from a seeded random sample of whole chunks (without replacement, each
 * chunk in the sources' bounds equally likely), read directly (not through the training cache: the
 * sample would only evict useful chunks). Memory: the sketch plus `readConcurrency` chunks.
 * 'meanstd' is exact over the values read (float64); 'percentile' carries the sketch's rank error.
 */
export async function sampleNormalisation(
  sources: readonly ChunkedSource[],
  mode: 'meanstd' | 'percentile',
  opts: SampleNormalisationOptions = {},
): Promise<SampledNormalisation> {
  const pLow = opts.pLow ?? defaultPercentiles.pLow;
  const pHigh = opts.pHigh ?? defaultPercentiles.pHigh;
  if (!(pLow >= 0 && pLow < pHigh && pHigh <= 100)) throw new RangeError(`percentiles must satisfy 0 <= pLow < pHigh <= 100, got ${pLow}, ${pHigh}`);
  const rng = new Rng(opts.seed ?? 0x6e6f726d);
  // Chunk grids of the bounds, addressed by one flat number over all sources (no list of every chunk:
  // a terabyte volume has millions).
  const grids = sources.map((source) => {
    const { shape, chunks } = source.reader.info;
    const bounds = source.bounds ?? { start: shape.map(() => 0), end: [...shape] };
    const first = chunks.map((c, a) => Math.floor(bounds.start[a] / c));
    const counts = chunks.map((c, a) => Math.ceil(bounds.end[a] / c) - first[a]);
    return { bounds, chunks, first, counts, total: voxelCount(counts) };
  });
  const chunksTotal = grids.reduce((n, g) => n + g.total, 0);
  if (chunksTotal === 0) throw new InputError('normalisation', 'no data to compute normalisation statistics from');
  const locate = (flat: number): { source: number; index: number[]; box: Box } => {
    let source = 0;
    while (flat >= grids[source].total) flat -= grids[source++].total;
    const { bounds, chunks, first, counts } = grids[source];
    const index = new Array<number>(counts.length);
    for (let a = counts.length - 1; a >= 0; a--) {
      index[a] = first[a] + (flat % counts[a]);
      flat = Math.floor(flat / counts[a]);
    }
    // The part of the chunk inside the bounds (and so inside the array: edge padding is never seen).
    const start = index.map((c, a) => Math.max(bounds.start[a], c * chunks[a]) - c * chunks[a]);
    const end = index.map((c, a) => Math.min(bounds.end[a], (c + 1) * chunks[a]) - c * chunks[a]);
    return { source, index, box: { start, end } };
  };
  const chunkVoxels = voxelCount(sources[0].reader.info.chunks);
  const wanted = Math.min(chunksTotal, Math.max(1, Math.ceil((opts.sampleValues ?? 2 ** 24) / chunkVoxels)));
  // Floyd's algorithm: `wanted` distinct chunks, uniformly, in O(wanted); read in storage order.
  const picked = new Set<number>();
  for (let j = chunksTotal - wanted; j < chunksTotal; j++) {
    const t = rng.int(j + 1);
    picked.add(picked.has(t) ? j : t);
  }
  const chosen = [...picked].sort((a, b) => a - b);
  const moments = new RunningMoments();
  const sketch = new QuantileSketch({ capacity: opts.sketchCapacity ?? defaultSketchCapacity, seed: rng.nextUint32() });
  // Windows of `concurrency` reads, added in order: the same statistics whatever order reads finish in, and
  // at most one window of chunks in memory.
  const concurrency = Math.max(1, opts.readConcurrency ?? 4);
  for (let at = 0; at < chosen.length; at += concurrency) {
    const window = await Promise.all(
      chosen.slice(at, at + concurrency).map(async (flat) => {
        const { source, index, box } = locate(flat);
        const reader = sources[source].reader;
        return cropChunk(await reader.readChunk(index), reader.info.chunks, box);
      }),
    );
    for (const values of window) {
      moments.add(values);
      sketch.add(values);
    }
  }
  const names = sources.map((s) => s.name).join(', ');
  if (sketch.nonFinite > 0) throw new InputError(names, `data contain NaN or infinite values (${sketch.nonFinite} in the sampled chunks)`);
  let normalisation: Normalisation;
  if (mode === 'meanstd') {
    const std = moments.std;
    normalisation = { mode, offset: moments.mean, scale: std > 0 ? std : 1 };
  } else {
    const low = sketch.quantile(pLow / 100);
    const high = sketch.quantile(pHigh / 100);
    normalisation = { mode, offset: low, scale: high - low > 0 ? high - low : 1, pLow, pHigh };
  }
  return { normalisation, chunksRead: wanted, chunksTotal, valuesSeen: sketch.count, rankErrorBound: sketch.rankErrorBound() };
}

/** The values of `box` (relative to the chunk) out of a whole chunk, C order. */
function cropChunk(chunk: Float32Array, chunkShape: readonly number[], box: Box): Float32Array {
  const whole = box.start.every((s, a) => s === 0 && box.end[a] === chunkShape[a]);
  if (whole) return chunk;
  const c3 = chunkShape.length === 2 ? [1, ...chunkShape] : [...chunkShape];
  const s3 = box.start.length === 2 ? [0, ...box.start] : [...box.start];
  const e3 = box.end.length === 2 ? [1, ...box.end] : [...box.end];
  const out = new Float32Array((e3[0] - s3[0]) * (e3[1] - s3[1]) * (e3[2] - s3[2]));
  let o = 0;
  for (let z = s3[0]; z < e3[0]; z++) {
    for (let y = s3[1]; y < e3[1]; y++) {
      const from = (z * c3[1] + y) * c3[2];
      out.set(chunk.subarray(from + s3[2], from + e3[2]), o);
      o += e3[2] - s3[2];
    }
  }
  return out;
}
