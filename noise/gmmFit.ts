/**
 * Fits the Gaussian mixture noise model (noise/gmm.ts) to (signal, observation) pairs by maximum
 * likelihood: Adam with hand-written gradients (noise/gmmGradients.ts says why not tfjs) on
 * minibatches drawn with a seeded generator, a fixed number of iterations and a cosine-decayed rate. The variance polynomials start from a weighted least-squares line through binned
 * residual variances (the Poisson-Gaussian fit, exact for the sharp-softplus parameterisation), so
 * the iterations go to the shape of the noise, not to finding its scale.
 */
import { Rng } from '../core/rng.js';
import { UsageError } from '../core/errors.js';
import { fitPoissonGaussian, type NlfBin } from './nlf.js';
import { gmmLogDensity, gmmVariance, VARIANCE_SHARPNESS, type GmmConstants, type GmmNoiseModel } from './gmm.js';
import type { NoisePairs } from './pairs.js';
import { Adam, gmmNegLogLikelihoodGradients } from './gmmGradients.js';

export const GMM_DEFAULTS = { components: 3, degree: 2, iterations: 1000, batchSize: 4096, learningRate: 0.02, seed: 1 } as const;
export const GMM_MAX_COMPONENTS = 16;
export const GMM_MAX_DEGREE = 6;
/** Pairs drawn once for the start values, the summary and the reported likelihood. */
const EVALUATION_PAIRS = 65536;
const SUMMARY_BINS = 32;

export interface GmmFitOptions {
  /** K Gaussians (1..16); default 3. */
  components?: number;
  /** Polynomial degree D (0..6); default 2. */
  degree?: number;
  /** Adam iterations; default 1000. */
  iterations?: number;
  /** Pairs per minibatch; default 4096. */
  batchSize?: number;
  learningRate?: number;
  seed?: number;
  /** Floor of each component's standard deviation, input units; default 5% of the residuals' standard deviation. */
  minStd?: number;
  signalFrom: GmmNoiseModel['signalFrom'];
  /** Called every 100 iterations with the minibatch's mean -log p(x|s). */
  onProgress?: (iteration: number, negLogLikelihood: number) => void;
}


function checkRange(name: string, value: number, lo: number, hi: number): number {
  if (!Number.isInteger(value) || value < lo || value > hi) throw new UsageError(`${name} must be an integer from ${lo} to ${hi}, got ${value}`);
  return value;
}

/**
 * Fits a GMM noise model to the pairs. It computes synchronously (plain loops); it is async so that a
 * fit on a tfjs backend could take its place without changing callers.
 */
export async function fitGmmNoiseModel(source: string, pairs: NoisePairs, opts: GmmFitOptions): Promise<GmmNoiseModel> {
  const K = checkRange('the number of GMM components', opts.components ?? GMM_DEFAULTS.components, 1, GMM_MAX_COMPONENTS);
  const D = checkRange('the GMM polynomial degree', opts.degree ?? GMM_DEFAULTS.degree, 0, GMM_MAX_DEGREE);
  const iterations = checkRange('the GMM iterations', opts.iterations ?? GMM_DEFAULTS.iterations, 0, 1e7);
  const batchSize = checkRange('the GMM batch size', opts.batchSize ?? GMM_DEFAULTS.batchSize, 1, 1 << 24);
  const learningRate = opts.learningRate ?? GMM_DEFAULTS.learningRate;
  const seed = opts.seed ?? GMM_DEFAULTS.seed;
  const rng = new Rng(seed);

  // A fixed sample: start values, summary, reported likelihood.
  const E = Math.min(EVALUATION_PAIRS, pairs.count);
  const evalIndex = new Float64Array(E);
  for (let i = 0; i < E; i++) evalIndex[i] = E === pairs.count ? i : rng.int(pairs.count);
  const evalSignal = Float64Array.from(evalIndex, (i) => pairs.signal(i));
  const evalObservation = Float64Array.from(evalIndex, (i) => pairs.observation(i));
  const order = Array.from({ length: E }, (_, i) => i).sort((p, q) => evalSignal[p] - evalSignal[q]);
  const sMin = evalSignal[order[Math.floor(0.001 * (E - 1))]];
  let sMax = evalSignal[order[Math.ceil(0.999 * (E - 1))]];
  if (!(sMax > sMin)) sMax = sMin + Math.max(1e-6, Math.abs(sMin) * 1e-3);
  let sumR2 = 0;
  for (let i = 0; i < E; i++) sumR2 += (evalObservation[i] - evalSignal[i]) ** 2;
  const residualScale = Math.sqrt(sumR2 / E) || 1;
  const minStd = opts.minStd ?? 0.05 * residualScale;
  if (!(minStd > 0)) throw new UsageError(`the GMM minimum standard deviation must be positive, got ${minStd}`);
  const constants: GmmConstants = { components: K, degree: D, signalRange: [sMin, sMax], residualScale, minVariance: minStd * minStd };

  // Start: every component on the Poisson-Gaussian line of binned residual variances (in the
  // normalised coordinate t and residualScale^2 units), small seeded spreads to break their symmetry.
  const bins = equalCountBins(order, SUMMARY_BINS).map((members): NlfBin => {
    let st = 0;
    let r2 = 0;
    for (const i of members) {
      st += Math.min(1, Math.max(0, (evalSignal[i] - sMin) / (sMax - sMin)));
      r2 += (evalObservation[i] - evalSignal[i]) ** 2;
    }
    return { intensity: st / members.length, variance: r2 / members.length / residualScale ** 2, count: members.length };
  });
  const line = fitPoissonGaussian(bins);
  const floor = constants.minVariance / residualScale ** 2;
  const zeros = (): number[][] => Array.from({ length: K }, () => new Array<number>(D + 1).fill(0));
  const weightInit = zeros();
  const offsetInit = zeros();
  const varianceInit = zeros();
  for (let k = 0; k < K; k++) {
    weightInit[k][0] = 0.1 * rng.normal();
    offsetInit[k][0] = K > 1 ? 0.1 * rng.normal() : 0;
    varianceInit[k][0] = Math.max(line.b - floor, 3 / VARIANCE_SHARPNESS);
    if (D >= 1) varianceInit[k][1] = line.a;
  }
  const coefficients = { weight: weightInit, offset: offsetInit, variance: varianceInit };
  const adam = new Adam([weightInit, offsetInit, varianceInit]);
  const gradients = { weight: zeros(), offset: zeros(), variance: zeros() };
  const s = new Float64Array(batchSize);
  const x = new Float64Array(batchSize);
  for (let it = 1; it <= iterations; it++) {
    for (let j = 0; j < batchSize; j++) {
      const i = rng.int(pairs.count);
      s[j] = pairs.signal(i);
      x[j] = pairs.observation(i);
    }
    const loss = gmmNegLogLikelihoodGradients(constants, coefficients, s, x, gradients);
    // Cosine decay to 1% of the rate: the last iterations average minibatch noise out instead of following it.
    const rate = learningRate * (0.01 + 0.99 * 0.5 * (1 + Math.cos((Math.PI * (it - 1)) / Math.max(1, iterations))));
    adam.step([gradients.weight, gradients.offset, gradients.variance], rate);
    if (it % 100 === 0) opts.onProgress?.(it, loss);
  }
  const model: GmmNoiseModel = {
    format: 'blindspot-noise-model',
    version: 1,
    kind: 'gmm',
    source,
    signalFrom: opts.signalFrom,
    ...constants,
    weightCoefficients: coefficients.weight,
    offsetCoefficients: coefficients.offset,
    varianceCoefficients: coefficients.variance,
    a: 0,
    b: 0,
    excludedObservations: pairs.excluded,
    fit: { pairs: pairs.count, iterations, batchSize, learningRate, seed, negLogLikelihood: NaN },
  };
  if (model.weightCoefficients.flat().some((v) => !Number.isFinite(v)) || model.varianceCoefficients.flat().some((v) => !Number.isFinite(v))) {
    throw new Error(`the GMM noise fit of ${source} diverged (non-finite coefficients); try a smaller learning rate`);
  }
  // The Poisson-Gaussian summary of the fitted model, for consumers that take var = a s + b.
  const summary = equalCountBins(order, SUMMARY_BINS).map((members): NlfBin => {
    let sum = 0;
    for (const i of members) sum += evalSignal[i];
    const intensity = sum / members.length;
    return { intensity, variance: gmmVariance(model, intensity), count: members.length };
  });
  Object.assign(model, fitPoissonGaussian(summary));
  let nll = 0;
  for (let i = 0; i < E; i++) nll -= gmmLogDensity(model, evalSignal[i], evalObservation[i]);
  model.fit.negLogLikelihood = nll / E;
  return model;
}

/** `order` (indices sorted by signal) cut into n runs of equal count (fewer when there are fewer values). */
function equalCountBins(order: readonly number[], n: number): number[][] {
  const bins = Math.max(1, Math.min(n, Math.floor(order.length / 4)));
  return Array.from({ length: bins }, (_, b) => order.slice(Math.floor((b * order.length) / bins), Math.floor(((b + 1) * order.length) / bins)));
}
