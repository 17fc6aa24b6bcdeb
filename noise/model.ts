/**
 * Noise models for train/denoise `--noise-model`: a calibrated model from repeated acquisitions of a
 * static sample (seed 004's recipe: ~100 frames, their mean as pseudo ground truth, the 2D
 * histogram of signal against observation), the Gaussian mixture model of PN2V / DivNoising
 * (noise/gmm.ts) fitted to the same pairs or bootstrapped from a denoiser, or an NLF record fitted
 * to an image. All give sigma_n^2(x) in input units and a Poisson-Gaussian summary var = a x + b.
 */
import { promises as fsp } from 'node:fs';
import { InputError, OutputError } from '../core/errors.js';
import { sampleTypeRange, type SampleType } from '../core/volume.js';
import { fitPoissonGaussian, nlfVariance, type NlfBin, type NlfRecord } from './nlf.js';
import { gmmModelProblem, gmmVariance, type GmmNoiseModel } from './gmm.js';

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

/**
 * Calibrates from a stack [frames, Y, X] of the same static scene. Observations at the sample
 * type's limits (clipped) or non-finite are left out, and so is every pixel with one of them.
 */
export function calibrateNoise(source: string, stack: Float32Array, shape: readonly number[], opts: CalibrateOptions = {}): CalibratedNoiseModel {
  if (shape.length !== 3) throw new InputError(source, `calibration needs a stack of frames [N, Y, X], got shape [${shape.join(', ')}]`);
  const [N, Y, X] = shape;
  if (N < 10) throw new InputError(source, `calibration needs repeated acquisitions (about 100 frames), got ${N}`);
  const P = Y * X;
  const [typeMin, typeMax] = sampleTypeRange(opts.sampleType ?? 'float32');
  let clipped = 0;
  let nonFinite = 0;
  const signal = new Float64Array(P);
  const usable = new Uint8Array(P);
  for (let p = 0; p < P; p++) {
    let sum = 0;
    let ok = true;
    for (let f = 0; f < N; f++) {
      const v = stack[f * P + p];
      if (!Number.isFinite(v)) {
        nonFinite++;
        ok = false;
      } else if (v <= typeMin || v >= typeMax) {
        clipped++;
        ok = false;
      }
      sum += v;
    }
    if (ok) {
      usable[p] = 1;
      signal[p] = sum / N;
    }
  }
  const pixels: number[] = [];
  for (let p = 0; p < P; p++) if (usable[p]) pixels.push(p);
  if (pixels.length < 16) throw new InputError(source, `too few pixels without clipped or NaN values (${pixels.length}) to calibrate`);
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
  const maxSigma = Math.sqrt(Math.max(...raw.map((r) => r.variance)));
  const residualBins = opts.residualBins ?? 128;
  const halfWidth = 6 * maxSigma || 1;
  const residualEdges = Array.from({ length: residualBins + 1 }, (_, i) => -halfWidth + (2 * halfWidth * i) / residualBins);
  const bins: CalibrationBin[] = raw.map((r) => {
    const histogram = new Array<number>(residualBins).fill(0);
    for (const p of r.members) {
      for (let f = 0; f < N; f++) {
        const k = Math.floor(((stack[f * P + p] - signal[p] + halfWidth) / (2 * halfWidth)) * residualBins);
        if (k >= 0 && k < residualBins) histogram[k]++;
      }
    }
    return { signal: r.signal, count: r.count, variance: r.variance, histogram };
  });
  const { a, b } = fitPoissonGaussian(bins.map((bin): NlfBin => ({ intensity: bin.signal, variance: bin.variance, count: bin.count })));
  return {
    format: 'blindspot-noise-model',
    version: 1,
    kind: 'calibrated',
    source,
    frames: N,
    frameShape: [Y, X],
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

