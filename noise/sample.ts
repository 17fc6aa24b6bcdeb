/**
 * Pixel samples for noise-level-function fits: (intensity index, residual, texture) per sampled pixel,
 * taken from an image on the calling thread (one pass over a sample of pixels), so the fit itself,
 * the costly part, can run on a worker with the sample's buffer transferred.
 *
 * Residual r = y - mu, normalised to the noise variance (noise/residualFilters.ts). Without a
 * denoiser, mu is a blind-spot predictor: Immerkaer's 3x3 quadratic predictor (edge sum / 2 - corner
 * sum / 4, residual gain 2.25), or a 5x5 filter learned from the image's own weak-texture patches
 * (cross-fitted minimum-variance direction) when that one leaves less structure in the residuals.
 * Both annihilate quadratic signals, and both are normalised so that for independent noise of
 * variance s^2 the residual's variance is s^2. With a denoiser, r = y - denoised.
 * The intensity index is the 5x5 mean: an estimate of the local clean value that is uncorrelated with
 * r (every residual filter here sums to zero over the 5x5 window), so conditioning on it does not
 * shrink the residual variance the way conditioning on a value containing y with weight would.
 * Texture: the mean squared residual on a ring 4..8 pixels away, independent of r for pure noise.
 * 3D volumes are sampled slice by slice (noise independent per voxel; no assumption on z spacing).
 */
import { InputError } from '../core/errors.js';
import { Rng } from '../core/rng.js';
import { sampleTypeRange, type SampleType } from '../core/volume.js';
import {
  IMMERKAER_GAIN,
  NARROW_RING,
  PATCH_RADIUS,
  QUADRATIC_FREE_BASIS,
  QUADRATIC_FREE_ORDERS,
  WIDE_RING,
  immerkaerResidual,
  ringNoiseMedian,
  symmetricEigen,
  type RingGeometry,
} from './residualFilters.js';

/** Variance of Immerkaer's unnormalised blind-spot residual over the noise variance. */
export const BLIND_SPOT_RESIDUAL_FACTOR = IMMERKAER_GAIN;

/** Which residual a sample holds. */
export type ResidualFilter = 'immerkaer-3x3' | 'learned-5x5' | 'denoiser';

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
   * mean squared normalised blind-spot residual on a ring of pixels 4..8 away whose stencils are
   * disjoint from the centre residual's: for pure noise it is independent of the centre's residual,
   * so selecting low-texture pixels by it does not bias the noise estimate, while spatially coherent
   * texture and edges show up in it.
   */
  pairs: Float32Array;
  /** 'blind-spot' residuals (from the image alone) or a given denoiser's. */
  residualKind: 'blind-spot' | 'denoiser';
  residualFilter: ResidualFilter;
  /** The texture screen keeps a pixel when texture <= textureLimit x its noise variance (half of pure noise passes). */
  textureLimit: number;
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

/** Trimmed residuals: |r| <= TRIM_C sqrt(v), their variance divided by the truncated normal's. */
const TRIM_C = 2.5;
/** Blocks of the cross-fitting checkerboard (pixels a side). */
const FOLD_BLOCK = 32;
/**
 * The learned filter needs this many screened training patches per fold (x the basis size): with fewer,
 * its noise and the choice between two noisy estimates cost more than the structure it removes.
 */
const MIN_PATCHES_PER_DIMENSION = 200;

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
  const useDenoiser = image.denoised !== undefined;
  const residualKind = useDenoiser ? 'denoiser' : 'blind-spot';

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
  const ring: RingGeometry = Math.min(Y, X) >= 40 ? WIDE_RING : NARROW_RING;
  const textureLimit = ringNoiseMedian(ring);
  if (constant) {
    warnings.push(`the image is constant (every finite value is ${firstFinite}): no noise to measure; reporting sigma 0 (global estimate)`);
    const percentiles = [1, 25, 50, 75, 99].map((p) => ({ p, intensity: firstFinite }));
    return {
      name, medianIntensity: firstFinite, percentiles, excludedPixels: { clipped: 0, nonFinite }, warnings,
      pairs: new Float32Array(0), residualKind, residualFilter: useDenoiser ? 'denoiser' : 'immerkaer-3x3', textureLimit,
      usablePixels: 0, fallback: 'constant',
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
  const base = { name, medianIntensity, percentiles, excludedPixels: { clipped: clippedCount, nonFinite }, warnings, residualKind, textureLimit } as const;

  // A centre is used when the box reaching its ring's stencils holds no unusable pixel: counted with a
  // per-slice summed-area table of unusable pixels, built only when there are some.
  // Centres need their whole ring inside the image: image borders often carry a frame or scanner
  // edge, which a ring cut at the border would let through (Set12 peppers: +1.3% at sigma 10).
  const B = ring.border;
  const reach = ring.outer + 1;
  let badTable: Int32Array | null = null;
  if (nonFinite > 0 || clippedCount > 0) {
    badTable = new Int32Array(Z * (Y + 1) * (X + 1));
    for (let z = 0; z < Z; z++) {
      const t0 = z * (Y + 1) * (X + 1);
      for (let y = 0; y < Y; y++) {
        let row = 0;
        for (let x = 0; x < X; x++) {
          if (!usable(data[(z * Y + y) * X + x])) row++;
          badTable[t0 + (y + 1) * (X + 1) + x + 1] = badTable[t0 + y * (X + 1) + x + 1] + row;
        }
      }
    }
  }
  const clean = (z: number, y: number, x: number): boolean => {
    if (!badTable) return true;
    const t0 = z * (Y + 1) * (X + 1);
    const y0 = Math.max(0, y - reach), y1 = Math.min(Y, y + reach + 1), x0 = Math.max(0, x - reach), x1 = Math.min(X, x + reach + 1);
    return badTable[t0 + y1 * (X + 1) + x1] - badTable[t0 + y0 * (X + 1) + x1] - badTable[t0 + y1 * (X + 1) + x0] + badTable[t0 + y0 * (X + 1) + x0] === 0;
  };

  const interior = Y > 2 * B && X > 2 * B ? Z * (Y - 2 * B) * (X - 2 * B) : 0;
  const D = QUADRATIC_FREE_BASIS.length;
  const side = 2 * PATCH_RADIUS + 1;
  const gram = QUADRATIC_FREE_ORDERS;
  const immerkaerScale = 1 / Math.sqrt(IMMERKAER_GAIN);
  const visitAll = interior <= maxSamples;
  const visits = interior > 0 ? (visitAll ? interior : maxSamples) : 0;
  const intensityList = new Float64Array(visits);
  const residualList = new Float64Array(visits);
  const textureList = new Float64Array(visits);
  /** Bit 0: the pixel's fold; bit 1: its patch may train that fold's filter. */
  const foldList = new Uint8Array(useDenoiser ? 0 : visits);
  const projectionList = new Float32Array(useDenoiser ? 0 : visits * D);
  let n = 0;
  let usablePixels = 0;
  if (interior > 0) {
    // Visit all interior pixels when few, else random ones (with replacement is fine at this size).
    const iy = X - 2 * B;
    const iz = (Y - 2 * B) * iy;
    const rows = new Float64Array(side * side); // rows[a * side + j]: row a of the patch against Gram polynomial j
    for (let k = 0; k < visits; k++) {
      const c = visitAll ? k : rng.int(interior);
      const z = Math.floor(c / iz);
      const y = B + Math.floor((c % iz) / iy);
      const x = B + (c % iy);
      if (!clean(z, y, x)) continue;
      const i = (z * Y + y) * X + x;
      usablePixels++;
      let residual: number;
      if (useDenoiser) {
        const mu = image.denoised![i];
        if (!Number.isFinite(mu)) continue;
        residual = data[i] - mu;
      } else residual = immerkaerResidual(data, i, X) * immerkaerScale;
      // Near the border the ring is cut to the residuals that fit in the image.
      let texture = 0;
      let ringCount = 0;
      const inside = y >= ring.border && y < Y - ring.border && x >= ring.border && x < X - ring.border;
      for (const [dy, dx] of ring.offsets) {
        if (!inside && (y + dy < 1 || y + dy > Y - 2 || x + dx < 1 || x + dx > X - 2)) continue;
        texture += immerkaerResidual(data, i + dy * X + dx, X) ** 2;
        ringCount++;
      }
      texture /= ringCount * IMMERKAER_GAIN;
      // Separable projection on the Gram-polynomial products: rows first, then columns.
      let sum = 0;
      for (let a = 0; a < side; a++) {
        const rowStart = i + (a - PATCH_RADIUS) * X - PATCH_RADIUS;
        for (let j = 0; j < side; j++) {
          const g = gram.polynomials[j];
          let s = 0;
          for (let t = 0; t < side; t++) s += g[t] * data[rowStart + t];
          rows[a * side + j] = s;
        }
        for (let t = 0; t < side; t++) sum += data[rowStart + t];
      }
      intensityList[n] = useDenoiser ? image.denoised![i] : sum / (side * side);
      residualList[n] = residual;
      textureList[n] = texture;
      if (!useDenoiser) {
        // Fold (checkerboard of blocks) and whether the patch may train its fold's filter: only patches
        // 2 x PATCH_RADIUS inside their block, so that no patch of the other fold shares a pixel with them.
        const by = y % FOLD_BLOCK;
        const bx = x % FOLD_BLOCK;
        const margin = 2 * PATCH_RADIUS;
        const trainable = by >= margin && by < FOLD_BLOCK - margin && bx >= margin && bx < FOLD_BLOCK - margin ? 2 : 0;
        foldList[n] = ((Math.floor(y / FOLD_BLOCK) + Math.floor(x / FOLD_BLOCK) + z) & 1) | trainable;
        for (let b = 0; b < D; b++) {
          const [oi, oj] = gram.orders[b];
          const g = gram.polynomials[oi];
          let s = 0;
          for (let a = 0; a < side; a++) s += g[a] * rows[a * side + oj];
          projectionList[n * D + b] = s;
        }
      }
      n++;
    }
    if (!visitAll) usablePixels = Math.round((usablePixels / visits) * interior);
  }
  const assemble = (residuals: ArrayLike<number>): Float32Array => {
    const pairs = new Float32Array(n * PAIR_STRIDE);
    for (let j = 0; j < n; j++) {
      pairs[PAIR_STRIDE * j] = intensityList[j];
      pairs[PAIR_STRIDE * j + 1] = residuals[j];
      pairs[PAIR_STRIDE * j + 2] = textureList[j];
    }
    return pairs;
  };
  if (n < MIN_USABLE_PIXELS) {
    warnings.push(
      `too few usable pixels for a noise-level function (${n} with a clean ${2 * reach + 1}x${2 * reach + 1} neighbourhood ${B} pixels from the border, need ${MIN_USABLE_PIXELS}; image ${shape.join('x')}); falling back to a global estimate`,
    );
    const fallbackValues = new Float32Array(values.length);
    fallbackValues.set(values);
    return { ...base, pairs: assemble(residualList), residualFilter: useDenoiser ? 'denoiser' : 'immerkaer-3x3', usablePixels, fallback: 'tiny', fallbackValues };
  }
  if (useDenoiser) return { ...base, pairs: assemble(residualList), residualFilter: 'denoiser', usablePixels, fallback: null };

  const learned = learnedResiduals(residualList.subarray(0, n), textureList.subarray(0, n), foldList.subarray(0, n), projectionList.subarray(0, n * D), D, textureLimit, intensityList.subarray(0, n));
  if (learned) return { ...base, pairs: assemble(learned), residualFilter: 'learned-5x5', usablePixels, fallback: null };
  return { ...base, pairs: assemble(residualList), residualFilter: 'immerkaer-3x3', usablePixels, fallback: null };
}

/** Iterated trimmed variance of residuals (noise units) over the screened pixels `keep`. */
function screenedVariance(residuals: ArrayLike<number>, keep: (j: number) => boolean, start: number): number {
  const truncation = truncatedNormalVariance(TRIM_C);
  let v = start;
  for (let round = 0; round < 4; round++) {
    let sum = 0;
    let count = 0;
    for (let j = 0; j < residuals.length; j++) {
      if (!keep(j)) continue;
      const r2 = residuals[j] * residuals[j];
      if (r2 > TRIM_C * TRIM_C * v) continue;
      sum += r2;
      count++;
    }
    if (count === 0) break;
    v = sum / count / truncation;
  }
  return v;
}

/** Intensity bands the learned filter is fitted in separately (equal-count): grain and texture differ with brightness. */
const FILTER_BANDS = 3;

/**
 * The residual of every sampled pixel: per intensity band, the learned 5x5 residual (each pixel's from
 * the filter fitted on the other fold) where it leaves less than Immerkaer's, else Immerkaer's. Null
 * when no band gains (or there are too few patches to learn from).
 */
function learnedResiduals(immerkaer: Float64Array, texture: Float64Array, fold: Uint8Array, projections: Float32Array, D: number, textureLimit: number, intensity: Float64Array): Float64Array | null {
  const n = immerkaer.length;
  const sortedIntensity = Float64Array.from(intensity).sort();
  const edges = Array.from({ length: FILTER_BANDS - 1 }, (_, k) => quantileOfSorted(sortedIntensity as unknown as Float32Array, (100 * (k + 1)) / FILTER_BANDS));
  const band = new Uint8Array(n);
  for (let j = 0; j < n; j++) {
    let b = 0;
    while (b < edges.length && intensity[j] > edges[b]) b++;
    band[j] = b;
  }
  /** Screened Immerkaer variance of the pixels `inSet` (a few rounds: the screen moves with the estimate). */
  const immerkaerVarianceOf = (inSet: (j: number) => boolean): number => {
    let sum = 0;
    let count = 0;
    for (let j = 0; j < n; j++) if (inSet(j)) { sum += Math.abs(immerkaer[j]); count++; }
    let v = Math.max(((1.2533 * sum) / Math.max(1, count)) ** 2, 1e-30); // mean |r| x sqrt(pi / 2)
    for (let round = 0; round < 3; round++) {
      const limit = textureLimit * v;
      v = screenedVariance(immerkaer, (j) => inSet(j) && texture[j] <= limit, v);
    }
    return v;
  };
  /** The two folds' filters from the screened trainable patches in `inSet`, or null if too few. */
  const fitFolds = (inSet: (j: number) => boolean, v: number): Float64Array[] | null => {
    const limit = textureLimit * v;
    const filters: Float64Array[] = [];
    for (const f of [0, 1]) {
      const mean = new Float64Array(D);
      const cov = new Float64Array(D * D);
      let count = 0;
      for (let j = 0; j < n; j++) {
        if (fold[j] !== (f | 2) || !inSet(j) || texture[j] > limit || immerkaer[j] ** 2 > TRIM_C * TRIM_C * v) continue;
        const o = j * D;
        for (let a = 0; a < D; a++) {
          const pa = projections[o + a];
          mean[a] += pa;
          for (let b = a; b < D; b++) cov[a * D + b] += pa * projections[o + b];
        }
        count++;
      }
      if (count < MIN_PATCHES_PER_DIMENSION * D) return null;
      for (let a = 0; a < D; a++)
        for (let b = a; b < D; b++) {
          const c = cov[a * D + b] / count - (mean[a] / count) * (mean[b] / count);
          cov[a * D + b] = c;
          cov[b * D + a] = c;
        }
      const { values, vectors } = symmetricEigen(cov, D);
      let smallest = 0;
      for (let k = 1; k < D; k++) if (values[k] < values[smallest]) smallest = k;
      const filter = new Float64Array(D);
      for (let a = 0; a < D; a++) filter[a] = vectors[a * D + smallest];
      filters.push(filter);
    }
    return filters;
  };
  const all = (): boolean => true;
  const globalFilters = fitFolds(all, immerkaerVarianceOf(all));
  if (!globalFilters) return null;
  const out = Float64Array.from(immerkaer);
  let gained = false;
  for (let b = 0; b < FILTER_BANDS; b++) {
    const inBand = (j: number): boolean => band[j] === b;
    const v = immerkaerVarianceOf(inBand);
    const filters = fitFolds(inBand, v) ?? globalFilters;
    const learned = new Float64Array(n);
    for (let j = 0; j < n; j++) {
      if (!inBand(j)) continue;
      const filter = filters[1 - (fold[j] & 1)];
      const o = j * D;
      let s = 0;
      for (let a = 0; a < D; a++) s += filter[a] * projections[o + a];
      learned[j] = s;
    }
    // Out of fold both are unbiased for pure noise; texture only adds. Keep the one with less.
    const limit = textureLimit * v;
    const screened = (j: number): boolean => inBand(j) && texture[j] <= limit;
    if (screenedVariance(learned, screened, v) < screenedVariance(immerkaer, screened, v)) {
      gained = true;
      for (let j = 0; j < n; j++) if (inBand(j)) out[j] = learned[j];
    }
  }
  return gained ? out : null;
}

export { quantileOfSorted };

/**
 * The global noise variance of a sample (input units^2): the screened (texture <= textureLimit x v),
 * trimmed variance of its residuals, iterated to a fixed point. The constant-variance estimate the
 * network fit refines per intensity; also a fast check of pixel selection on its own.
 */
export function screenedSampleVariance(sample: NoiseSample): number {
  const n = sample.pairs.length / PAIR_STRIDE;
  if (n === 0) return 0;
  const residuals = new Float64Array(n);
  const texture = new Float64Array(n);
  for (let j = 0; j < n; j++) {
    residuals[j] = sample.pairs[PAIR_STRIDE * j + 1];
    texture[j] = sample.pairs[PAIR_STRIDE * j + 2];
  }
  const absSorted = Float64Array.from(residuals, Math.abs).sort();
  let v = Math.max((1.4826 * quantileOfSorted(absSorted as unknown as Float32Array, 50)) ** 2, 1e-30);
  for (let round = 0; round < 4; round++) {
    const limit = sample.textureLimit * v;
    v = screenedVariance(residuals, (j) => texture[j] <= limit, v);
  }
  return v;
}

/** Var of N(0,1) truncated to [-c, c]: 1 - 2 c phi(c) / (2 Phi(c) - 1). */
export function truncatedNormalVariance(c: number): number {
  const phi = Math.exp(-0.5 * c * c) / Math.sqrt(2 * Math.PI);
  const twoPhiMinus1 = erf(c / Math.SQRT2);
  return 1 - (2 * c * phi) / twoPhiMinus1;
}

/** Abramowitz-Stegun 7.1.26 is too coarse for a 1% factor; use a series/continued-fraction-free high-accuracy form. */
function erf(x: number): number {
  // W. J. Cody's rational approximation via erfc for |x| up to 6 is overkill; a 30-term Taylor series is exact to 1e-12 for |x| <= 3.
  const sign = x < 0 ? -1 : 1;
  const ax = Math.abs(x);
  if (ax > 3.5) return sign;
  let term = ax;
  let sum = ax;
  for (let n = 1; n < 80; n++) {
    term *= (-ax * ax) / n;
    const add = term / (2 * n + 1);
    sum += add;
    if (Math.abs(add) < 1e-16) break;
  }
  return (sign * 2 * sum) / Math.sqrt(Math.PI);
}
