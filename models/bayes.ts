/**
 * Bayesian blind-spot denoising (Laine et al. 2019, seed 001): the network predicts a Gaussian
 * prior N(mu_x, sigma_x^2) for the clean value from the pixel's surroundings only; the noisy value
 * y ~ N(mu_x, sigma_x^2 + sigma_n^2(mu_x)) trains it, and the posterior mean brings the pixel's own
 * value back in:
 *   E[x | y] = (sigma_n^2 mu_x + sigma_x^2 y) / (sigma_x^2 + sigma_n^2),
 *   Std[x | y] = sqrt(sigma_x^2 sigma_n^2 / (sigma_x^2 + sigma_n^2)).
 * The network's two output channels are mu_x and log sigma_x^2, in normalised units.
 */
import * as tf from '@tensorflow/tfjs-core';
import type { LayersModel } from '@tensorflow/tfjs-layers';
import { UsageError } from '../core/errors.js';
import type { Normalisation } from './normalise.js';

/** The noise of the data, in raw (input) intensity units. */
export type NoiseSpec =
  | { kind: 'gaussian'; sigma: number }
  /** var = a * x + b (x: clean intensity); the Poisson-Gaussian summary of an NLF or a calibration. */
  | { kind: 'poisson-gaussian'; a: number; b: number };

/** Smallest variance (normalised units) used anywhere: keeps logs and divisions finite. */
const MIN_VARIANCE = 1e-6;

export function describeNoise(noise: NoiseSpec): string {
  return noise.kind === 'gaussian' ? `Gaussian sigma ${noise.sigma}` : `Poisson-Gaussian var = ${noise.a} x + ${noise.b}`;
}

export function validateNoiseSpec(noise: NoiseSpec, where: string): void {
  const finite = (v: number): boolean => Number.isFinite(v);
  if (noise.kind === 'gaussian') {
    if (!(finite(noise.sigma) && noise.sigma > 0)) throw new UsageError(`${where}: noise sigma must be a positive number, got ${noise.sigma}`);
  } else if (noise.kind === 'poisson-gaussian') {
    if (!finite(noise.a) || !finite(noise.b) || noise.a < 0) throw new UsageError(`${where}: Poisson-Gaussian noise needs a >= 0 and a finite b, got a=${noise.a} b=${noise.b}`);
  } else {
    throw new UsageError(`${where}: unknown noise kind ${(noise as { kind: string }).kind}`);
  }
}

/**
 * sigma_n^2 as a function of the normalised clean value, in normalised units: raw = n * scale + offset,
 * and variances scale by 1 / scale^2.
 */
export function normalisedNoiseVariance(noise: NoiseSpec, norm: Normalisation): (muNormalised: tf.Tensor) => tf.Tensor {
  const s2 = norm.scale * norm.scale;
  if (noise.kind === 'gaussian') {
    const v = Math.max((noise.sigma * noise.sigma) / s2, MIN_VARIANCE);
    return (mu) => tf.fill(mu.shape, v);
  }
  const { a, b } = noise;
  // a * (n * scale + offset) + b, over scale^2
  const slope = (a * norm.scale) / s2;
  const intercept = (a * norm.offset + b) / s2;
  return (mu) => tf.maximum(tf.add(tf.mul(mu, slope), intercept), MIN_VARIANCE);
}

/**
 * sigma_n^2 from a trainable log sigma (normalised units): the "learned" noise of Laine et al., a
 * global parameter trained jointly with the network. It is identifiable because it is shared by
 * every pixel while the prior variance is per pixel.
 */
export function learnedNoiseVariance(logSigma: tf.Variable): (mu: tf.Tensor) => tf.Tensor {
  return (mu) => tf.mul(tf.onesLike(mu), tf.exp(tf.mul(2, logSigma)));
}

/** Splits a [..., 2] prediction into mu_x and sigma_x^2 ([..., 1] each). */
export function splitPrior(prediction: tf.Tensor): { mean: tf.Tensor; variance: tf.Tensor } {
  const channels = prediction.shape[prediction.rank - 1];
  if (channels !== 2) throw new Error(`a Gaussian-prior network has 2 output channels (mean, log variance), this one has ${channels}`);
  const [mean, logVariance] = tf.split(prediction, 2, prediction.rank - 1);
  // Clamp the log so exp stays finite early in training.
  const variance = tf.add(tf.exp(tf.clipByValue(logVariance, -20, 20)), MIN_VARIANCE);
  return { mean, variance };
}

/**
 * Mean over masked pixels of the negative log-likelihood (up to a constant) of the noisy target
 * under N(mu_x, sigma_x^2 + sigma_n^2(mu_x)). Only masked pixels count: elsewhere the network saw
 * the value it would be scored on.
 */
export function gaussianPriorLoss(
  noiseVariance: (mu: tf.Tensor) => tf.Tensor,
): (prediction: tf.Tensor, target: tf.Tensor, mask: tf.Tensor) => tf.Scalar {
  return (prediction, target, mask) =>
    tf.tidy(() => {
      const { mean, variance } = splitPrior(prediction);
      const total = tf.add(variance, noiseVariance(mean));
      const nll = tf.mul(0.5, tf.add(tf.log(total), tf.div(tf.square(tf.sub(target, mean)), total)));
      return tf.div(tf.sum(tf.mul(nll, mask)), tf.maximum(tf.sum(mask), 1)) as tf.Scalar;
    });
}

/** Posterior mean and standard deviation of the clean value given the prior and the noisy input y. */
export function posterior(prediction: tf.Tensor, y: tf.Tensor, noiseVariance: (mu: tf.Tensor) => tf.Tensor): { mean: tf.Tensor; std: tf.Tensor } {
  return tf.tidy(() => {
    const { mean: mu, variance: priorVar } = splitPrior(prediction);
    const noiseVar = noiseVariance(mu);
    const total = tf.add(priorVar, noiseVar);
    const mean = tf.div(tf.add(tf.mul(noiseVar, mu), tf.mul(priorVar, y)), total);
    const std = tf.sqrt(tf.div(tf.mul(priorVar, noiseVar), total));
    return { mean, std };
  });
}

export type PriorOutput = 'posterior-mean' | 'posterior-std' | 'prior-mean';

/**
 * A one-channel tile model (operators/predictTiles.ts) from a Gaussian-prior network: the posterior
 * mean (the denoised image), the posterior standard deviation (the uncertainty map), or the prior
 * mean alone (a plain blind-spot estimate that ignores the pixel's own value).
 */
export function priorTileModel(model: LayersModel, noiseVariance: (mu: tf.Tensor) => tf.Tensor, output: PriorOutput): (x: tf.Tensor) => tf.Tensor {
  return (x) =>
    tf.tidy(() => {
      const prediction = model.predict(x) as tf.Tensor;
      if (output === 'prior-mean') return splitPrior(prediction).mean;
      const p = posterior(prediction, x, noiseVariance);
      return output === 'posterior-mean' ? p.mean : p.std;
    });
}

/** Parses `gaussian:SIGMA` or `poisson-gaussian:A,B` (raw intensity units), as the CLI's --prior takes it. */
export function parseNoiseSpec(text: string, option = '--prior'): NoiseSpec {
  const [kind, params = ''] = text.split(':', 2);
  const numbers = params.split(',').map((p) => Number(p.trim()));
  let spec: NoiseSpec;
  if (kind === 'gaussian' && numbers.length === 1) spec = { kind: 'gaussian', sigma: numbers[0] };
  else if (kind === 'poisson-gaussian' && numbers.length === 2) spec = { kind: 'poisson-gaussian', a: numbers[0], b: numbers[1] };
  else throw new UsageError(`${option} must be gaussian:SIGMA or poisson-gaussian:A,B (input intensity units), got '${text}'`);
  validateNoiseSpec(spec, option);
  return spec;
}
