/**
 * The histogram noise model (the `calibrated` kind of noise/model.ts: per-signal-bin variances and
 * residual histograms, with a Poisson-Gaussian fit) built from (signal, observation) pairs instead
 * of a stack of frames: what `blindspot noise --bootstrap --model histogram` writes, from a
 * denoiser's output as the signal. No N / (N - 1) correction applies (the signal is not a mean of
 * the observations); the denoiser's own error counts as noise.
 */
import { Rng } from '../core/rng.js';
import { fitPoissonGaussian, type NlfBin } from './nlf.js';
import { residualHistograms, type CalibratedNoiseModel } from './model.js';
import type { NoisePairs } from './pairs.js';

/** Pairs used at most (a seeded random subset beyond): bounds the sort and the memory. */
const MAX_PAIRS = 1 << 22;

export interface HistogramFitOptions {
  /** Signal bins (equal-count); default 32. */
  signalBins?: number;
  /** Residual histogram bins; default 128, spanning +-6 sigma of the noisiest bin. */
  residualBins?: number;
  seed?: number;
}

export function histogramNoiseModelFromPairs(source: string, pairs: NoisePairs, opts: HistogramFitOptions = {}): CalibratedNoiseModel {
  const rng = new Rng(opts.seed ?? 1);
  const n = Math.min(pairs.count, MAX_PAIRS);
  const signal = new Float64Array(n);
  const residual = new Float64Array(n);
  for (let j = 0; j < n; j++) {
    const i = n === pairs.count ? j : rng.int(pairs.count);
    signal[j] = pairs.signal(i);
    residual[j] = pairs.observation(i) - signal[j];
  }
  const order = Array.from({ length: n }, (_, j) => j).sort((p, q) => signal[p] - signal[q]);
  const binCount = Math.max(1, Math.min(opts.signalBins ?? 32, Math.floor(n / 4)));
  const raw = Array.from({ length: binCount }, (_, b) => {
    const members = order.slice(Math.floor((b * n) / binCount), Math.floor(((b + 1) * n) / binCount));
    let sumS = 0;
    let sumR2 = 0;
    for (const j of members) {
      sumS += signal[j];
      sumR2 += residual[j] ** 2;
    }
    return { signal: sumS / members.length, count: members.length, variance: sumR2 / members.length, members };
  });
  const { residualEdges, bins } = residualHistograms(raw, opts.residualBins ?? 128, (j, add) => add(residual[j]));
  const { a, b } = fitPoissonGaussian(bins.map((bin): NlfBin => ({ intensity: bin.signal, variance: bin.variance, count: bin.count })));
  return {
    format: 'blindspot-noise-model',
    version: 1,
    kind: 'calibrated',
    source,
    signalFrom: 'denoised',
    frames: 0,
    frameShape: [],
    a,
    b,
    bins,
    residualEdges,
    excludedObservations: pairs.excluded,
  };
}
