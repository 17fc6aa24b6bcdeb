/**
 * Intensity normalisation: normalised = (x - offset) / scale, from the mean and standard deviation
 * (n2v's default) or from low / high percentiles (CSBDeep's percentile normaliser).
 */
import { InputError } from '../core/errors.js';
import { Rng } from '../core/rng.js';
import type { Volume } from '../core/volume.js';

export interface Normalisation {
  mode: 'meanstd' | 'percentile';
  offset: number;
  scale: number;
  /** Percentiles (0..100) used in 'percentile' mode. */
  pLow?: number;
  pHigh?: number;
}

export const defaultPercentiles = { pLow: 2, pHigh: 99.8 } as const;

/** Seed of the sampler used when the caller passes no rng, so unseeded statistics are still reproducible. */
const defaultSamplingSeed = 0x6e6f726d;

/**
 * Statistics over all `volumes` together. 'meanstd' uses every value (two passes in float64);
 * 'percentile' uses at most `maxSamples` values (default 1e6) drawn uniformly with replacement, or all
 * values when there are no more than that, and numpy's linear interpolation between order statistics.
 * A zero spread (constant data) gives scale 1, so normalising never divides by zero.
 */
export function computeNormalisation(
  volumes: Volume[],
  mode: 'meanstd' | 'percentile',
  opts: { pLow?: number; pHigh?: number; rng?: Rng; maxSamples?: number } = {},
): Normalisation {
  const total = volumes.reduce((n, v) => n + v.data.length, 0);
  if (total === 0) throw new InputError('normalisation', 'no data to compute normalisation statistics from');
  if (mode === 'meanstd') {
    let sum = 0;
    for (const v of volumes) for (let i = 0; i < v.data.length; i++) sum += v.data[i];
    const mean = sum / total;
    let squares = 0;
    for (const v of volumes)
      for (let i = 0; i < v.data.length; i++) {
        const d = v.data[i] - mean;
        squares += d * d;
      }
    const std = Math.sqrt(squares / total);
    if (!Number.isFinite(mean) || !Number.isFinite(std)) throw new InputError('normalisation', 'data contain NaN or infinite values');
    return { mode, offset: mean, scale: std > 0 ? std : 1 };
  }
  const pLow = opts.pLow ?? defaultPercentiles.pLow;
  const pHigh = opts.pHigh ?? defaultPercentiles.pHigh;
  if (!(pLow >= 0 && pLow < pHigh && pHigh <= 100)) throw new RangeError(`percentiles must satisfy 0 <= pLow < pHigh <= 100, got ${pLow}, ${pHigh}`);
  const maxSamples = opts.maxSamples ?? 1e6;
  if (!(Number.isInteger(maxSamples) && maxSamples >= 1)) throw new RangeError(`maxSamples must be a positive integer, got ${maxSamples}`);
  let samples: Float32Array;
  if (total <= maxSamples) {
    samples = new Float32Array(total);
    let at = 0;
    for (const v of volumes) {
      samples.set(v.data, at);
      at += v.data.length;
    }
  } else {
    const rng = opts.rng ?? new Rng(defaultSamplingSeed);
    // Cumulative sizes: a uniform draw over the concatenation of all volumes.
    const ends: number[] = [];
    let end = 0;
    for (const v of volumes) ends.push((end += v.data.length));
    samples = new Float32Array(maxSamples);
    for (let s = 0; s < maxSamples; s++) {
      const flat = Math.floor(rng.uniform() * total);
      let vi = 0;
      while (flat >= ends[vi]) vi++;
      samples[s] = volumes[vi].data[flat - (vi === 0 ? 0 : ends[vi - 1])];
    }
  }
  samples.sort();
  if (Number.isNaN(samples[samples.length - 1])) throw new InputError('normalisation', 'data contain NaN values');
  const low = percentileOfSorted(samples, pLow);
  const high = percentileOfSorted(samples, pHigh);
  if (!Number.isFinite(low) || !Number.isFinite(high)) throw new InputError('normalisation', 'data contain infinite values');
  const spread = high - low;
  return { mode, offset: low, scale: spread > 0 ? spread : 1, pLow, pHigh };
}

/** Percentile p (0..100) of ascending `sorted`, linear interpolation (numpy's default). */
export function percentileOfSorted(sorted: ArrayLike<number>, p: number): number {
  const position = (p / 100) * (sorted.length - 1);
  const below = Math.floor(position);
  const above = Math.min(below + 1, sorted.length - 1);
  const t = position - below;
  return sorted[below] + t * (sorted[above] - sorted[below]);
}

export function normalise(data: Float32Array, n: Normalisation): Float32Array {
  const out = new Float32Array(data.length);
  const inverseScale = 1 / n.scale;
  for (let i = 0; i < data.length; i++) out[i] = (data[i] - n.offset) * inverseScale;
  return out;
}

export function denormalise(data: Float32Array, n: Normalisation): Float32Array {
  const out = new Float32Array(data.length);
  for (let i = 0; i < data.length; i++) out[i] = data[i] * n.scale + n.offset;
  return out;
}
