/**
 * Noise-level function (NLF) fit, CNN_est style (Wu et al., seed 000): a network of 1x1
 * convolutions only is a per-pixel MLP from intensity to noise variance, here
 * intensity -> tanh(H) -> softplus, fitted by the Gaussian negative log-likelihood of residuals
 *   L = 1/2 [log v(x) + r^2 / v(x)],
 * with hand-written gradients and Adam in plain TypeScript (no tfjs: this runs in worker threads).
 *
 * Robustness: residuals of textured or edge pixels are not noise. The fit is an iterated trimmed
 * likelihood: pixels with |r| > c sqrt(v) are dropped, and the fitted (truncated-Gaussian) variance
 * is divided by the variance of a standard normal truncated at +-c. A Poisson-Gaussian summary
 * var = a x + b is fitted by weighted least squares to binned trimmed variances.
 */
import { Rng } from '../core/rng.js';
import { PAIR_STRIDE, quantileOfSorted, truncatedNormalVariance, type NoiseSample, type ResidualFilter } from './sample.js';

// The truncation factor lives with the samples it corrects (noise/sample.ts); re-exported for the fit's users.
export { truncatedNormalVariance };

/** Half-width of the kept residuals, in noise standard deviations. */
const TRIM_C = 2.5;

/** The fitted network, with its input and output scalings; all that is needed to evaluate v(x). */
export interface NlfNetwork {
  /** t = (x - inputOffset) / inputScale, clamped to [0, 1] (the fitted intensity range). */
  inputOffset: number;
  inputScale: number;
  /** Hidden layer: h_j = tanh(w1[j] t + b1[j]). */
  w1: number[];
  b1: number[];
  /** v = outputScale * softplus(sum_j w2[j] h_j + b2). */
  w2: number[];
  b2: number;
  outputScale: number;
}

/** One intensity bin of the fit data (for plots and the Poisson-Gaussian summary). */
export interface NlfBin {
  intensity: number;
  /** Noise variance estimated from the bin's residuals (trimmed, corrected), input units^2. */
  variance: number;
  count: number;
}

/**
 * The NLF record: saved with a model (one per training image) and in a denoised output's metadata.
 * Units: intensities in input units, variances in input units squared.
 */
export interface NlfRecord {
  format: 'blindspot-nlf';
  version: 1;
  /** The image (file name or block id). */
  name: string;
  /** 'nlf': the fitted network; 'global': a constant variance (constant, tiny image), network null. */
  method: 'nlf' | 'global';
  /** 'blind-spot' (a quadratic blind-spot residual filter) or 'denoiser' residuals. */
  residuals: 'blind-spot' | 'denoiser';
  /** The blind-spot filter used (noise/residualFilters.ts): 'immerkaer-3x3', 'learned-5x5', or 'denoiser'. Absent in records written before it existed. */
  residualFilter?: ResidualFilter;
  network: NlfNetwork | null;
  /** Poisson-Gaussian summary var = a x + b. */
  a: number;
  b: number;
  /** Noise standard deviation at the image's median intensity. */
  sigma: number;
  medianIntensity: number;
  /** sigma at intensity percentiles of the image. */
  percentiles: { p: number; intensity: number; sigma: number }[];
  bins: NlfBin[];
  pixelsUsed: number;
  excludedPixels: { clipped: number; nonFinite: number; trimmed: number };
  warnings: string[];
}

export interface FitOptions {
  hidden?: number;
  /** Adam iterations per trimming round. */
  iterations?: number;
  batchSize?: number;
  learningRate?: number;
  seed?: number;
  bins?: number;
  /** Called every 10 Adam iterations (a worker uses it to throttle itself). */
  onProgress?: (fraction: number) => void;
}

/** Evaluates a fitted network's variance at intensity x (input units). */
export function networkVariance(net: NlfNetwork, x: number): number {
  let t = (x - net.inputOffset) / net.inputScale;
  t = t < 0 ? 0 : t > 1 ? 1 : t;
  let z = net.b2;
  for (let j = 0; j < net.w1.length; j++) z += net.w2[j] * Math.tanh(net.w1[j] * t + net.b1[j]);
  return net.outputScale * softplus(z);
}

/** sigma_n^2(x) of an NLF record, input units. */
export function nlfVariance(record: NlfRecord, x: number): number {
  if (record.network) return networkVariance(record.network, x);
  return Math.max(0, record.a * x + record.b);
}

function softplus(z: number): number {
  return z > 30 ? z : Math.log1p(Math.exp(z));
}
function sigmoid(z: number): number {
  return 1 / (1 + Math.exp(-z));
}

/** Robust global variance: (1.4826 MAD)^2 of residuals (median-centred). */
function madVariance(values: ArrayLike<number>): number {
  const n = values.length;
  if (n === 0) return 0;
  const sorted = Float64Array.from(values as ArrayLike<number>).sort();
  const med = quantileOfSorted(sorted as unknown as Float32Array, 50);
  const dev = sorted.map((v) => Math.abs(v - med)).sort();
  const mad = quantileOfSorted(dev as unknown as Float32Array, 50);
  return (1.4826 * mad) ** 2;
}

/** Weighted least squares var = a x + b (weights count / var^2: the sampling variance of a variance); a clamped at 0. */
export function fitPoissonGaussian(bins: readonly NlfBin[]): { a: number; b: number } {
  let sw = 0, sx = 0, sy = 0, sxx = 0, sxy = 0;
  for (const bin of bins) {
    if (!(bin.count > 1 && bin.variance > 0)) continue;
    const w = bin.count / (bin.variance * bin.variance);
    sw += w;
    sx += w * bin.intensity;
    sy += w * bin.variance;
    sxx += w * bin.intensity * bin.intensity;
    sxy += w * bin.intensity * bin.variance;
  }
  if (sw === 0) return { a: 0, b: 0 };
  const det = sw * sxx - sx * sx;
  if (det <= 1e-12 * sw * sxx) return { a: 0, b: sy / sw };
  let a = (sw * sxy - sx * sy) / det;
  let b = (sy - a * sx) / sw;
  if (a < 0) {
    a = 0;
    b = sy / sw;
  } else if (b < 0) {
    // Through the origin: var = a x.
    b = 0;
    a = sxy / sxx;
  }
  return { a, b };
}

/** A constant-variance record (constant or tiny images, or the caller's fallback). */
function globalRecord(sample: NoiseSample, variance: number, warnings: string[]): NlfRecord {
  const sigma = Math.sqrt(Math.max(0, variance));
  return {
    format: 'blindspot-nlf',
    version: 1,
    name: sample.name,
    method: 'global',
    residuals: sample.residualKind,
    residualFilter: sample.residualFilter,
    network: null,
    a: 0,
    b: variance,
    sigma,
    medianIntensity: sample.medianIntensity,
    percentiles: sample.percentiles.map(({ p, intensity }) => ({ p, intensity, sigma })),
    bins: [],
    pixelsUsed: sample.usablePixels,
    excludedPixels: { ...sample.excludedPixels, trimmed: 0 },
    warnings,
  };
}

/** Fits the NLF of one sample. Pure computation (runs in a worker or in-thread). */
export function fitNlf(sample: NoiseSample, opts: FitOptions = {}): NlfRecord {
  const warnings = [...sample.warnings];
  if (sample.fallback === 'constant') return globalRecord(sample, 0, warnings);
  const pairs = sample.pairs;
  const n = pairs.length / PAIR_STRIDE;
  if (sample.fallback === 'tiny' || n === 0) {
    let variance = 0;
    if (n >= 8) variance = madVariance(residualsOf(pairs));
    else if (sample.fallbackValues && sample.fallbackValues.length >= 3) {
      // First differences of neighbouring values: var(d) = 2 s^2 on a slowly varying signal.
      const v = sample.fallbackValues;
      const diffs = new Float64Array(v.length - 1);
      for (let i = 1; i < v.length; i++) diffs[i - 1] = v[i] - v[i - 1];
      variance = madVariance(diffs) / 2;
    }
    return globalRecord(sample, variance, warnings);
  }

  const rng = new Rng(opts.seed ?? 7);
  const hidden = opts.hidden ?? 4;
  const iterations = opts.iterations ?? 250;
  const batchSize = Math.min(opts.batchSize ?? 2048, n);
  const learningRate = opts.learningRate ?? 0.03;
  // Residuals are normalised (var(r) = noise variance): texture and the fit share the noise's units.
  const textureLimit = sample.textureLimit;

  const intensity = new Float64Array(n);
  const r2 = new Float64Array(n);
  const texture = new Float64Array(n);
  for (let i = 0; i < n; i++) {
    intensity[i] = pairs[PAIR_STRIDE * i];
    r2[i] = pairs[PAIR_STRIDE * i + 1] ** 2;
    texture[i] = pairs[PAIR_STRIDE * i + 2];
  }
  const sortedIntensity = Float64Array.from(intensity).sort();
  const lo = quantileOfSorted(sortedIntensity as unknown as Float32Array, 0.5);
  const hi = quantileOfSorted(sortedIntensity as unknown as Float32Array, 99.5);
  const inputScale = hi > lo ? hi - lo : 1;
  const t = new Float64Array(n);
  for (let i = 0; i < n; i++) t[i] = Math.min(1, Math.max(0, (intensity[i] - lo) / inputScale));

  // Residual variance as a robust starting point and output scale.
  const globalResidualVariance = Math.max(madVariance(residualsOf(pairs)), 1e-12);
  const net: NlfNetwork = {
    inputOffset: lo,
    inputScale,
    w1: Array.from({ length: hidden }, () => rng.normal()),
    b1: Array.from({ length: hidden }, () => rng.normal()),
    w2: Array.from({ length: hidden }, () => rng.normal() * 0.1),
    b2: Math.log(Math.E - 1), // softplus(b2) = 1: starts at the global variance
    outputScale: globalResidualVariance,
  };
  const params = hidden * 3 + 1;
  const theta = new Float64Array(params);
  const pack = (): void => {
    for (let j = 0; j < hidden; j++) {
      theta[j] = net.w1[j];
      theta[hidden + j] = net.b1[j];
      theta[2 * hidden + j] = net.w2[j];
    }
    theta[3 * hidden] = net.b2;
  };
  const unpack = (): void => {
    for (let j = 0; j < hidden; j++) {
      net.w1[j] = theta[j];
      net.b1[j] = theta[hidden + j];
      net.w2[j] = theta[2 * hidden + j];
    }
    net.b2 = theta[3 * hidden];
  };
  pack();
  const m = new Float64Array(params);
  const v = new Float64Array(params);
  const grad = new Float64Array(params);
  const h = new Float64Array(hidden);
  let adamStep = 0;

  // Kept set per round: |r| <= c sqrt(v_noise-scale). Round 0 trims against the global variance.
  const truncation = truncatedNormalVariance(TRIM_C);
  let kept = new Uint32Array(n);
  let keptCount = 0;
  const trimAgainst = (varianceAt: (i: number) => number): void => {
    keptCount = 0;
    for (let i = 0; i < n; i++) {
      const vr = varianceAt(i);
      if (r2[i] <= TRIM_C * TRIM_C * vr && texture[i] <= textureLimit * vr) kept[keptCount++] = i;
    }
  };
  trimAgainst(() => globalResidualVariance);

  const rounds = 4;
  for (let round = 0; round < rounds; round++) {
    // The network models the variance of the kept (truncated) residuals: v_fit = truncation * v_r.
    for (let it = 0; it < iterations; it++) {
      grad.fill(0);
      for (let k = 0; k < batchSize; k++) {
        const i = kept[rng.int(keptCount)];
        const ti = t[i];
        let zsum = theta[3 * hidden];
        for (let j = 0; j < hidden; j++) {
          h[j] = Math.tanh(theta[j] * ti + theta[hidden + j]);
          zsum += theta[2 * hidden + j] * h[j];
        }
        const vi = net.outputScale * softplus(zsum) + 1e-12 * net.outputScale;
        // dL/dv = (1/v - r^2/v^2) / 2; dv/dz = outputScale * sigmoid(z)
        const dz = 0.5 * (1 / vi - r2[i] / (vi * vi)) * net.outputScale * sigmoid(zsum);
        grad[3 * hidden] += dz;
        for (let j = 0; j < hidden; j++) {
          grad[2 * hidden + j] += dz * h[j];
          const dpre = dz * theta[2 * hidden + j] * (1 - h[j] * h[j]);
          grad[j] += dpre * ti;
          grad[hidden + j] += dpre;
        }
      }
      adamStep++;
      const lr = learningRate * (it < iterations / 2 || round < rounds - 1 ? 1 : 0.3);
      const b1c = 1 - 0.9 ** adamStep;
      const b2c = 1 - 0.999 ** adamStep;
      for (let p = 0; p < params; p++) {
        const g = grad[p] / batchSize;
        m[p] = 0.9 * m[p] + 0.1 * g;
        v[p] = 0.999 * v[p] + 0.001 * g * g;
        theta[p] -= (lr * (m[p] / b1c)) / (Math.sqrt(v[p] / b2c) + 1e-8);
      }
      if (opts.onProgress && it % 10 === 0) opts.onProgress((round + it / iterations) / rounds);
    }
    unpack();
    if (round < rounds - 1) {
      const fitted = new Float64Array(n);
      for (let i = 0; i < n; i++) fitted[i] = networkVariance(net, intensity[i]) / truncation;
      trimAgainst((i) => fitted[i]);
    }
  }
  // Undo truncation: v_noise = v_fit / truncation.
  net.outputScale = net.outputScale / truncation;
  const trimmed = n - keptCount;

  // Binned data: equal-count intensity bins of the kept pixels.
  const binCount = Math.max(1, Math.min(opts.bins ?? 24, Math.floor(keptCount / 200)));
  const order = Array.from(kept.subarray(0, keptCount)).sort((p, q) => intensity[p] - intensity[q]);
  const bins: NlfBin[] = [];
  for (let bIndex = 0; bIndex < binCount; bIndex++) {
    const start = Math.floor((bIndex * keptCount) / binCount);
    const end = Math.floor(((bIndex + 1) * keptCount) / binCount);
    let sumX = 0;
    let sumR2 = 0;
    for (let k = start; k < end; k++) {
      sumX += intensity[order[k]];
      sumR2 += r2[order[k]];
    }
    const count = end - start;
    if (count < 2) continue;
    bins.push({ intensity: sumX / count, variance: sumR2 / count / truncation, count });
  }
  const { a, b } = fitPoissonGaussian(bins);
  const sigmaAt = (x: number): number => Math.sqrt(networkVariance(net, x));
  kept = new Uint32Array(0);
  return {
    format: 'blindspot-nlf',
    version: 1,
    name: sample.name,
    method: 'nlf',
    residuals: sample.residualKind,
    residualFilter: sample.residualFilter,
    network: net,
    a,
    b,
    sigma: sigmaAt(sample.medianIntensity),
    medianIntensity: sample.medianIntensity,
    percentiles: sample.percentiles.map(({ p, intensity: x }) => ({ p, intensity: x, sigma: sigmaAt(x) })),
    bins,
    pixelsUsed: n,
    excludedPixels: { ...sample.excludedPixels, trimmed },
    warnings,
  };
}

function residualsOf(pairs: Float32Array): Float64Array {
  const out = new Float64Array(pairs.length / PAIR_STRIDE);
  for (let i = 0; i < out.length; i++) out[i] = pairs[PAIR_STRIDE * i + 1];
  return out;
}
