/**
 * Noise models for train/denoise `--noise-model`: a calibrated model from repeated acquisitions of a
 * static sample (seed 004's recipe: ~100 frames, their mean as pseudo ground truth, the 2D
 * histogram of signal against observation), the Gaussian mixture model of PN2V / DivNoising
 * (noise/gmm.ts) fitted to the same pairs or bootstrapped from a denoiser, or an NLF record fitted
 * to an image. All give sigma_n^2(x) in input units and a Poisson-Gaussian summary var = a x + b.
 */
import { promises as fsp } from 'node:fs';
import { InputError, OutputError } from '../core/errors.js';
import type { SampleType } from '../core/volume.js';
import { fitPoissonGaussian, nlfVariance, type NlfBin, type NlfRecord } from './nlf.js';
import { gmmModelProblem, gmmVariance, type GmmNoiseModel } from './gmm.js';
import { frameMeans } from './pairs.js';

/** One signal bin of a calibration: the observations of pixels whose pseudo-clean signal falls in it. */
export interface CalibrationBin {
  /** Mean pseudo-clean signal of the bin, input units. */
  signal: number;
  /** Observations counted (pixel x frame). */
  count: number;
  /** Noise variance var(y - s) corrected for s being the mean of the frames (x N / (N - 1)). */
  variance: number;
  /** Histogram of y - s over `CalibratedNoiseModel.residualEdges` (one row of the 2D histogram). */
  histogram: number[];
}

export interface CalibratedNoiseModel {
  format: 'blindspot-noise-model';
  version: 1;
  kind: 'calibrated';
  source: string;
  /**
   * Where the pseudo-clean signal came from: the mean of repeated frames (absent in files written
   * before bootstrapping existed), or a trained denoiser's output (noise/histogramFit.ts).
   */
  signalFrom?: 'frame-mean' | 'denoised';
  /** Frames averaged; 0 for a bootstrapped model. */
  frames: number;
  /** Frame shape [Y, X]; empty for a bootstrapped model. */
  frameShape: number[];
  /** Poisson-Gaussian fit var = a s + b to the bins (weighted least squares). */
  a: number;
  b: number;
  /** Signal bins, ascending; sigma_n^2 interpolates their variances linearly in between. */
  bins: CalibrationBin[];
  /** Edges of the residual (y - s) axis of the histograms, input units. */
  residualEdges: number[];
  excludedObservations: { clipped: number; nonFinite: number };
}

export interface NlfNoiseModel {
  format: 'blindspot-noise-model';
  version: 1;
  kind: 'nlf';
  nlf: NlfRecord;
}

export type { GmmNoiseModel } from './gmm.js';
export type NoiseModel = CalibratedNoiseModel | NlfNoiseModel | GmmNoiseModel;

/** sigma_n^2(x), input units, for any noise model (or a bare NLF record). */
export function noiseVarianceFunction(model: NoiseModel | NlfRecord): (x: number) => number {
  if ('format' in model && model.format === 'blindspot-nlf') return (x) => nlfVariance(model, x);
  const m = model as NoiseModel;
  if (m.kind === 'nlf') return (x) => nlfVariance(m.nlf, x);
  const pg = (x: number): number => Math.max(0, m.a * x + m.b);
  if (m.kind === 'gmm') {
    // Outside the fitted signal range, the Poisson-Gaussian summary extrapolates (as for calibrated bins).
    const [lo, hi] = m.signalRange;
    return (x) => (x < lo || x > hi ? pg(x) : gmmVariance(m, x));
  }
  const bins = m.bins;
  if (bins.length === 0) return pg;
  return (x) => {
    // Outside the calibrated signal range, the Poisson-Gaussian fit extrapolates.
    if (x <= bins[0].signal || x >= bins[bins.length - 1].signal) return pg(x);
    let lo = 0;
    let hi = bins.length - 1;
    while (hi - lo > 1) {
      const mid = (lo + hi) >> 1;
      if (bins[mid].signal <= x) lo = mid;
      else hi = mid;
    }
    const f = (x - bins[lo].signal) / (bins[hi].signal - bins[lo].signal);
    return bins[lo].variance + f * (bins[hi].variance - bins[lo].variance);
  };
}

/** The Poisson-Gaussian summary of a model, as models/bayes.ts NoiseSpec. */
export function noiseSpecOf(model: NoiseModel | NlfRecord): { kind: 'poisson-gaussian'; a: number; b: number } {
  const m = 'format' in model && model.format === 'blindspot-nlf' ? model : (model as NoiseModel).kind === 'nlf' ? (model as NlfNoiseModel).nlf : (model as CalibratedNoiseModel | GmmNoiseModel);
  return { kind: 'poisson-gaussian', a: m.a, b: m.b };
}

export interface CalibrateOptions {
  /** Signal bins (equal-count); default 32. */
  signalBins?: number;
  /** Residual histogram bins; default 128, spanning +-6 sigma of the noisiest bin. */
  residualBins?: number;
  sampleType?: SampleType;
}

/** A signal bin before its residual histogram: its members (pixels or pairs) and their statistics. */
export interface RawSignalBin {
  signal: number;
  count: number;
  variance: number;
  members: readonly number[];
}

/**
 * Each bin's histogram of residuals y - s over common edges spanning +-6 sigma of the noisiest bin;
 * `residualsOf(member, add)` gives a member's residuals (one per frame, or its one pair).
 */
export function residualHistograms(
  raw: readonly RawSignalBin[],
  residualBins: number,
  residualsOf: (member: number, add: (residual: number) => void) => void,
): { residualEdges: number[]; bins: CalibrationBin[] } {
  const halfWidth = 6 * Math.sqrt(Math.max(...raw.map((r) => r.variance))) || 1;
  const residualEdges = Array.from({ length: residualBins + 1 }, (_, i) => -halfWidth + (2 * halfWidth * i) / residualBins);
  const bins = raw.map((r): CalibrationBin => {
    const histogram = new Array<number>(residualBins).fill(0);
    const add = (residual: number): void => {
      const k = Math.floor(((residual + halfWidth) / (2 * halfWidth)) * residualBins);
      if (k >= 0 && k < residualBins) histogram[k]++;
    };
    for (const member of r.members) residualsOf(member, add);
    return { signal: r.signal, count: r.count, variance: r.variance, histogram };
  });
  return { residualEdges, bins };
}

/**
 * Calibrates from a stack [frames, Y, X] of the same static scene. Observations at the sample
 * type's limits (clipped) or non-finite are left out, and so is every pixel with one of them.
 */
export function calibrateNoise(source: string, stack: Float32Array, shape: readonly number[], opts: CalibrateOptions = {}): CalibratedNoiseModel {
  const { frames: N, pixelsPerFrame: P, usable, mean, excluded } = frameMeans(source, stack, shape, opts.sampleType ?? 'float32');
  const { clipped, nonFinite } = excluded;
  const signal = new Float64Array(P);
  usable.forEach((p, i) => (signal[p] = mean[i]));
  const pixels = [...usable];
  pixels.sort((p, q) => signal[p] - signal[q]);
  const binCount = Math.max(1, Math.min(opts.signalBins ?? 32, Math.floor(pixels.length / 4)));
  const correction = N / (N - 1);
  const raw: { signal: number; count: number; variance: number; members: number[] }[] = [];
  for (let b = 0; b < binCount; b++) {
    const members = pixels.slice(Math.floor((b * pixels.length) / binCount), Math.floor(((b + 1) * pixels.length) / binCount));
    let sumS = 0;
    let sumR2 = 0;
    for (const p of members) {
      sumS += signal[p];
      for (let f = 0; f < N; f++) sumR2 += (stack[f * P + p] - signal[p]) ** 2;
    }
    const count = members.length * N;
    raw.push({ signal: sumS / members.length, count, variance: (sumR2 / count) * correction, members });
  }
  const { residualEdges, bins } = residualHistograms(raw, opts.residualBins ?? 128, (p, add) => {
    for (let f = 0; f < N; f++) add(stack[f * P + p] - signal[p]);
  });
  const { a, b } = fitPoissonGaussian(bins.map((bin): NlfBin => ({ intensity: bin.signal, variance: bin.variance, count: bin.count })));
  return {
    format: 'blindspot-noise-model',
    version: 1,
    kind: 'calibrated',
    source,
    frames: N,
    frameShape: [shape[1], shape[2]],
    a,
    b,
    bins,
    residualEdges,
    excludedObservations: { clipped, nonFinite },
  };
}

export async function saveNoiseModel(file: string, model: NoiseModel): Promise<void> {
  try {
    await fsp.writeFile(file, JSON.stringify(model, null, 1) + '\n');
  } catch (err) {
    throw new OutputError(file, `cannot write the noise model: ${(err as Error).message}`, { cause: err });
  }
}

/** Reads a noise model written by `blindspot noise --calibrate` (or an NLF record / NLF model). */
export async function loadNoiseModel(file: string): Promise<NoiseModel> {
  let parsed: unknown;
  try {
    parsed = JSON.parse(await fsp.readFile(file, 'utf8'));
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    throw new InputError(file, code === 'ENOENT' ? 'does not exist' : `is not a readable JSON noise model: ${(err as Error).message}`, { cause: err });
  }
  const obj = parsed as Partial<NoiseModel> & Partial<NlfRecord>;
  if (obj && obj.format === 'blindspot-nlf') return { format: 'blindspot-noise-model', version: 1, kind: 'nlf', nlf: obj as NlfRecord };
  if (!obj || obj.format !== 'blindspot-noise-model' || (obj.kind !== 'calibrated' && obj.kind !== 'nlf' && obj.kind !== 'gmm')) {
    throw new InputError(file, 'is not a blindspot noise model (expected format "blindspot-noise-model", kind "calibrated", "gmm" or "nlf")');
  }
  const m = obj as NoiseModel;
  const a = m.kind === 'nlf' ? m.nlf?.a : m.a;
  const b = m.kind === 'nlf' ? m.nlf?.b : m.b;
  if (!Number.isFinite(a) || !Number.isFinite(b) || (a as number) < 0) throw new InputError(file, `has an invalid Poisson-Gaussian summary a=${a} b=${b}`);
  if (m.kind === 'calibrated' && (!Array.isArray(m.bins) || m.bins.some((bin) => !Number.isFinite(bin.signal) || !(bin.variance >= 0)))) {
    throw new InputError(file, 'has invalid calibration bins');
  }
  if (m.kind === 'gmm') {
    const problem = gmmModelProblem(m);
    if (problem) throw new InputError(file, `is a GMM noise model that ${problem}`);
  }
  return m;
}

