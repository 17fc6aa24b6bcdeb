/**
 * The tail of a Gaussian-prior network's graph (models/bayes.ts): from the 2-channel prediction
 * (prior mean mu, log prior variance) and the network's own input y, the posterior mean
 *   E[x | y] = (sigma_n^2 mu + sigma_x^2 y) / (sigma_x^2 + sigma_n^2),
 * its standard deviation sqrt(sigma_x^2 sigma_n^2 / (sigma_x^2 + sigma_n^2)), and the prior mean, all
 * in normalised units, with the same clamps as bayes.ts (log variance clipped to [-20, 20], variances
 * at least 1e-6). sigma_n^2 is the model's noise in normalised units: a constant for Gaussian noise
 * (given or learned), a*x + b evaluated at mu for Poisson-Gaussian noise (bayes.ts normalisedNoiseVariance).
 */
import type { NoiseSpec } from '../bayes.js';
import type { Normalisation } from '../normalise.js';
import type { GraphBuilder } from './graph.js';

/** bayes.ts MIN_VARIANCE: the smallest variance used anywhere. */
const MIN_VARIANCE = 1e-6;
/** bayes.ts splitPrior: the log variance is clipped to this range before exp. */
const LOG_VARIANCE_LIMIT = 20;

/** The noise variance as the tail computes it: constant, or slope * mu + intercept (normalised units). */
export type NormalisedNoise = { kind: 'constant'; variance: number } | { kind: 'linear'; slope: number; intercept: number };

/** The same numbers as bayes.ts normalisedNoiseVariance, or null for a noise kind the graph cannot express. */
export function normalisedNoise(noise: NoiseSpec, norm: Normalisation): NormalisedNoise | null {
  const s2 = norm.scale * norm.scale;
  if (noise.kind === 'gaussian') return { kind: 'constant', variance: Math.max((noise.sigma * noise.sigma) / s2, MIN_VARIANCE) };
  if (noise.kind === 'poisson-gaussian') return { kind: 'linear', slope: (noise.a * norm.scale) / s2, intercept: (noise.a * norm.offset + noise.b) / s2 };
  return null;
}

export interface PosteriorTensors {
  posteriorMean: string;
  posteriorStd: string;
  priorMean: string;
}

/**
 * Appends the posterior to `g`: `prediction` is the network's channels-first output (2 channels),
 * `input` the channels-first network input y (1 channel).
 */
export function appendPosterior(g: GraphBuilder, prediction: string, input: string, noise: NormalisedNoise): PosteriorTensors {
  const CHANNELS = 1;
  const mu = g.slice(prediction, CHANNELS, 0, 1, 'prior_mean_channel');
  const logVariance = g.slice(prediction, CHANNELS, 1, 2, 'prior_log_variance');
  const clipped = g.op('Clip', [logVariance, g.scalar('log_variance_min', -LOG_VARIANCE_LIMIT), g.scalar('log_variance_max', LOG_VARIANCE_LIMIT)], 'prior_log_variance_clip');
  const minVariance = g.scalar('min_variance', MIN_VARIANCE);
  const priorVariance = g.op('Add', [g.op('Exp', [clipped], 'prior_variance_exp'), minVariance], 'prior_variance');
  const noiseVariance =
    noise.kind === 'constant'
      ? g.scalar('noise_variance', noise.variance)
      : g.op('Max', [g.op('Add', [g.op('Mul', [mu, g.scalar('noise_slope', noise.slope)], 'noise_slope_mu'), g.scalar('noise_intercept', noise.intercept)], 'noise_linear'), minVariance], 'noise_variance');
  const total = g.op('Add', [priorVariance, noiseVariance], 'total_variance');
  const weighted = g.op('Add', [g.op('Mul', [noiseVariance, mu], 'noise_times_mu'), g.op('Mul', [priorVariance, input], 'prior_times_y')], 'posterior_numerator');
  const posteriorMean = g.op('Div', [weighted, total], 'posterior_mean');
  const posteriorStd = g.op('Sqrt', [g.op('Div', [g.op('Mul', [priorVariance, noiseVariance], 'variance_product'), total], 'posterior_variance')], 'posterior_std');
  return { posteriorMean, posteriorStd, priorMean: mu };
}
