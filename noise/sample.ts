/**
 * Pixel samples for noise-level-function fits: pairs (intensity index, residual) taken from an
 * image on the calling thread (one O(n) pass plus O(sample) work), so the fit itself, the costly
 * part, can run on a worker with the sample's buffer transferred.
 *
 * Residual r = y - mu. Without a denoiser, mu is a blind-spot predictor from the 3x3 neighbours
 * (centre excluded): mu = (sum of the 4 edge neighbours) / 2 - (sum of the 4 corner neighbours) / 4.
 * It reproduces constant, linear and quadratic signals exactly (the plain 8-neighbour mean only
 * constants and linear ones), so less texture leaks into r; for independent noise of variance s^2
 * var(r) = s^2 (1 + sum w_i^2) = 2.25 s^2, the factor the fit divides out.
 * The intensity index is (edge sum + 2 corner sum) / 12: an estimate of the local clean value that is
 * uncorrelated with r (cov(r, index) = 0 for independent noise), so conditioning on it does not shrink
 * the residual variance the way conditioning on a 3x3 mean (which contains y) would.
 * 3D volumes are sampled slice by slice (noise independent per voxel; no assumption on z spacing).
 */
import { InputError } from '../core/errors.js';
import { Rng } from '../core/rng.js';
import { sampleTypeRange, type SampleType } from '../core/volume.js';

/** Variance of r over the noise variance for the blind-spot predictor above. */
export const BLIND_SPOT_RESIDUAL_FACTOR = 2.25;

export interface NoiseImage {
  name: string;
  data: Float32Array;
  /** [Y, X] or [Z, Y, X]. */
  shape: readonly number[];
  sampleType: SampleType;
  /** The current denoiser's output for this image (same shape); residuals are then y - denoised. */
  denoised?: Float32Array;
}

export interface SampleOptions {
  /** Pixels sampled at most (default 200 000). */
  maxSamples?: number;
  seed?: number;
}

/** What a fit needs, all in input intensity units; `pairs` is the buffer a worker receives. */
export interface NoiseSample {
  name: string;
  /**
   * Interleaved [intensity, residual, texture] per sampled pixel (PAIR_STRIDE values). texture: the
   * mean squared blind-spot residual at the 8 pixels 3 away (rows/columns +-3), whose 3x3 stencils are
   * disjoint from each other's and from the centre's: for pure noise it is independent of the
   * centre's residual (8 texture / var(r) ~ chi^2_8), so selecting low-texture pixels by it does not
   * bias the noise estimate, while spatially coherent texture and edges show up in it.
   */
  pairs: Float32Array;
  /** var(r) / noise variance (2.25 for the blind-spot predictor, 1 with a denoiser). */
  residualFactor: number;
  /** Median intensity of the usable pixels (where `sigma` is reported). */
  medianIntensity: number;
  /** Intensity percentiles 1, 25, 50, 75, 99 of the usable pixels. */
  percentiles: { p: number; intensity: number }[];
  usablePixels: number;
  excludedPixels: { clipped: number; nonFinite: number };
  /** Problems found (constant, tiny, NaN, clipping); the fit falls back to a global estimate when `fallback` is set. */
  warnings: string[];
  fallback: null | 'constant' | 'tiny';
  /** Sample (n >= 1) of plain pixel values for the global fallback (MAD of differences), only when the image is tiny. */
  fallbackValues?: Float32Array;
}

const MIN_USABLE_PIXELS = 256;
/** Values per sampled pixel in NoiseSample.pairs. */
export const PAIR_STRIDE = 3;

/** Values treated as clipped: integer dtype bounds, and an image max/min that repeats (saturation). */
function clipLimits(data: Float32Array, sampleType: SampleType): { low: number; high: number; clippedCount: number } {
  let min = Infinity;
  let max = -Infinity;
  let finite = 0;
  for (let i = 0; i < data.length; i++) {
    const v = data[i];
    if (!Number.isFinite(v)) continue;
    finite++;
    if (v < min) min = v;
    if (v > max) max = v;
  }
  let minCount = 0;
  let maxCount = 0;
  for (let i = 0; i < data.length; i++) {
    const v = data[i];
    if (v === min) minCount++;
    if (v === max) maxCount++;
  }
  const [typeMin, typeMax] = sampleTypeRange(sampleType);
  // A continuous-valued noisy image hits its exact extreme once or a few times; saturation many times.
  const repeated = (count: number): boolean => count >= Math.max(4, finite * 2e-4);
  const low = min <= typeMin || repeated(minCount) ? min : -Infinity;
  const high = max >= typeMax || repeated(maxCount) ? max : Infinity;
  const clippedCount = (low === -Infinity ? 0 : minCount) + (high === Infinity ? 0 : maxCount);
  return { low: low === -Infinity ? -Infinity : low, high: high === Infinity ? Infinity : high, clippedCount };
}

function quantileOfSorted(sorted: Float32Array | number[], p: number): number {
  if (sorted.length === 0) return NaN;
  const pos = (p / 100) * (sorted.length - 1);
  const lo = Math.floor(pos);
  const hi = Math.min(sorted.length - 1, lo + 1);
  return sorted[lo] + (sorted[hi] - sorted[lo]) * (pos - lo);
}

/** Builds the fit sample of one image (or one volume block). Throws InputError only when no pixel is usable. */
export function sampleNoise(image: NoiseImage, opts: SampleOptions = {}): NoiseSample {
  const { name, data, shape } = image;
  if (shape.length !== 2 && shape.length !== 3) throw new InputError(name, `noise fit needs a 2D [Y, X] or 3D [Z, Y, X] image, got shape [${shape.join(', ')}]`);
  const [Z, Y, X] = shape.length === 3 ? shape : [1, shape[0], shape[1]];
  if (Z * Y * X !== data.length) throw new InputError(name, `shape [${shape.join(', ')}] does not match ${data.length} values`);
  if (image.denoised && image.denoised.length !== data.length) throw new InputError(name, 'the denoised image has a different size');
  const rng = new Rng(opts.seed ?? 1);
  const maxSamples = opts.maxSamples ?? 200_000;
  const warnings: string[] = [];

  let nonFinite = 0;
  for (let i = 0; i < data.length; i++) if (!Number.isFinite(data[i])) nonFinite++;
  if (nonFinite === data.length) throw new InputError(name, 'has no finite values (all NaN or infinite): no noise to estimate');
  if (nonFinite > 0) warnings.push(`${nonFinite} NaN or infinite value(s) excluded from the noise fit`);
  let firstFinite = NaN;
  let constant = true;
  for (let i = 0; i < data.length && constant; i++) {
    const v = data[i];
    if (!Number.isFinite(v)) continue;
    if (Number.isNaN(firstFinite)) firstFinite = v;
    else if (v !== firstFinite) constant = false;
  }
  if (constant) {
    warnings.push(`the image is constant (every finite value is ${firstFinite}): no noise to measure; reporting sigma 0 (global estimate)`);
    const percentiles = [1, 25, 50, 75, 99].map((p) => ({ p, intensity: firstFinite }));
    return {
      name, medianIntensity: firstFinite, percentiles, excludedPixels: { clipped: 0, nonFinite }, warnings,
      pairs: new Float32Array(0), residualFactor: 1, usablePixels: 0, fallback: 'constant',
    };
  }
  const { low, high, clippedCount } = clipLimits(data, image.sampleType);
  if (clippedCount > 0) warnings.push(`${clippedCount} clipped or saturated pixel(s) (value ${Number.isFinite(low) ? low : ''}${Number.isFinite(low) && Number.isFinite(high) ? ' / ' : ''}${Number.isFinite(high) ? high : ''}) and their neighbours excluded from the noise fit`);
  const usable = (v: number): boolean => Number.isFinite(v) && v > low && v < high;

  // Percentiles of usable intensities, from a strided sample (exact enough for reporting).
  const stride = Math.max(1, Math.floor(data.length / 200_000));
  const values: number[] = [];
  for (let i = 0; i < data.length; i += stride) if (usable(data[i])) values.push(data[i]);
  const sortedValues = Float32Array.from(values).sort();
  const percentiles = [1, 25, 50, 75, 99].map((p) => ({ p, intensity: quantileOfSorted(sortedValues, p) }));
  const medianIntensity = quantileOfSorted(sortedValues, 50);
  const base = {
    name,
    medianIntensity,
    percentiles,
    excludedPixels: { clipped: clippedCount, nonFinite },
    warnings,
  };


  // Candidate centres: pixels 4 from the border whose 3x3 neighbourhood (in-slice) is all usable.
  const B = 4;
  const interior = Y > 2 * B && X > 2 * B ? Z * (Y - 2 * B) * (X - 2 * B) : 0;
  const residualAt = (i: number): number => {
    const edges = data[i - X] + data[i + X] + data[i - 1] + data[i + 1];
    const corners = data[i - X - 1] + data[i - X + 1] + data[i + X - 1] + data[i + X + 1];
    const mu = useDenoiser ? image.denoised![i] : edges / 2 - corners / 4;
    return data[i] - mu;
  };
  const ringOffsets = [-3 * X - 3, -3 * X, -3 * X + 3, -3, 3, 3 * X - 3, 3 * X, 3 * X + 3];
  const useDenoiser = image.denoised !== undefined;
  const residualFactor = useDenoiser ? 1 : BLIND_SPOT_RESIDUAL_FACTOR;
  const pairsList: number[] = [];
  let usablePixels = 0;
  if (interior > 0) {
    // Visit all interior pixels when few, else random ones (with replacement is fine at this size).
    const visitAll = interior <= maxSamples;
    const visits = visitAll ? interior : maxSamples;
    const iy = X - 2 * B;
    const iz = (Y - 2 * B) * iy;
    for (let k = 0; k < visits; k++) {
      const c = visitAll ? k : rng.int(interior);
      const z = Math.floor(c / iz);
      const y = B + Math.floor((c % iz) / iy);
      const x = B + (c % iy);
      const i = (z * Y + y) * X + x;
      const centre = data[i];
      const n = data[i - X];
      const s = data[i + X];
      const w = data[i - 1];
      const e = data[i + 1];
      const nw = data[i - X - 1];
      const ne = data[i - X + 1];
      const sw = data[i + X - 1];
      const se = data[i + X + 1];
      if (!(usable(centre) && usable(n) && usable(s) && usable(w) && usable(e) && usable(nw) && usable(ne) && usable(sw) && usable(se))) continue;
      usablePixels++;
      const edges = n + s + w + e;
      const corners = nw + ne + sw + se;
      const intensity = (edges + 2 * corners) / 12;
      let mu: number;
      if (useDenoiser) {
        mu = image.denoised![i];
        if (!Number.isFinite(mu)) continue;
      } else mu = edges / 2 - corners / 4;
      let texture = 0;
      for (const o of ringOffsets) {
        const rj = residualAt(i + o);
        texture += rj * rj;
      }
      texture /= ringOffsets.length;
      if (!Number.isFinite(texture)) continue;
      pairsList.push(useDenoiser ? mu : intensity, centre - mu, texture);
    }
    if (!visitAll) usablePixels = Math.round((usablePixels / visits) * interior);
  }
  if (pairsList.length / PAIR_STRIDE < MIN_USABLE_PIXELS) {
    warnings.push(
      `too few usable pixels for a noise-level function (${pairsList.length / PAIR_STRIDE} with a full 3x3 neighbourhood 4 pixels from the border, need ${MIN_USABLE_PIXELS}; image ${shape.join('x')}); falling back to a global estimate`,
    );
    const fallbackValues = new Float32Array(values.length);
    fallbackValues.set(values);
    return { ...base, pairs: Float32Array.from(pairsList), residualFactor, usablePixels, fallback: 'tiny', fallbackValues };
  }
  return { ...base, pairs: Float32Array.from(pairsList), residualFactor, usablePixels, fallback: null };
}

export { quantileOfSorted };
