/**
 * Noise2Info (Wang et al., ICCV 2023, seed 002): the Noise2Same loss L_in + 2 sigma L_ex, with the
 * noise level sigma estimated from the noisy data alone by an upper bound that tightens as the
 * network improves (Algorithm 2).
 *
 * Per-pixel units throughout (m pixels): for a denoiser F, noisy X, clean Y,
 *   l_in  = mean((F(X) - X)^2)                       the internal loss (no mask),
 *   l_ex  = sqrt(mean_J((F(X) - F(X_J^c))^2))         the external (J-invariance) term: F(X_J^c) is
 *                                                     the prediction from the masked input, J the masked pixels,
 *   d     = mean((F(X) - Y)^2)                       unknown, bounded below by sorted matching:
 *   d*    = E[ mean_j (sort(N*)_j - sort(X - F(X))_j)^2 ],  N* drawn (with replacement) from the
 *           empirical distribution of the removed noise X - F(X) over all images (Lemma 2), sorted
 *           and matched in order with each image's sorted removed noise (Lemma 3);
 *   sigma <= l_ex + sqrt(l_ex^2 + l_in - d) <= l_ex + sqrt(l_ex^2 + l_in - d*)   (the paper's bound
 *           (L_ex + sqrt(L_ex^2 + m (L_in - E||F(X) - Y||^2))) / m with L_in = m l_in, L_ex = m l_ex).
 * Each epoch sigma_loss <- min(sigma_loss, estimate), starting at 1 (normalised units).
 */
import * as tf from '@tensorflow/tfjs-core';
import type { Rng } from '../core/rng.js';

/** Algorithm 2 starts from sigma_loss = 1 (data normalised to unit scale). */
export const initialNoise2InfoSigma = 1;

export interface Noise2InfoSigmaOptions {
  /** l_ex of the current network on these images (RMS of F(X) - F(X_J^c) over masked pixels); 0 for a J-invariant F. */
  externalLoss?: number;
  /** Monte Carlo draws of N* (the paper's k_mc); default 4. */
  trials?: number;
  rng: Rng;
}

export interface Noise2InfoSigmaEstimate {
  /** The upper bound on sigma_n (same units as the images). */
  sigma: number;
  /** l_in: mean squared removed noise. */
  internalLoss: number;
  /** l_ex as given. */
  externalLoss: number;
  /** d*: the sorted-matching lower bound of mean((F(X) - Y)^2). */
  matchedDistance: number;
}

/**
 * Noise2Info's sigma upper bound from noisy images and the network's predictions for them (one
 * array or one per image, same lengths pairwise). Pure apart from `rng`.
 */
export function estimateNoise2InfoSigma(
  noisy: Float32Array | readonly Float32Array[],
  prediction: Float32Array | readonly Float32Array[],
  opts: Noise2InfoSigmaOptions,
): Noise2InfoSigmaEstimate {
  const noisyImages = noisy instanceof Float32Array ? [noisy] : noisy;
  const predictedImages = prediction instanceof Float32Array ? [prediction] : prediction;
  if (noisyImages.length === 0 || noisyImages.length !== predictedImages.length) {
    throw new RangeError(`estimateNoise2InfoSigma: needs as many predictions as noisy images (>= 1), got ${noisyImages.length} and ${predictedImages.length}`);
  }
  const externalLoss = opts.externalLoss ?? 0;
  if (!(externalLoss >= 0)) throw new RangeError(`externalLoss must be >= 0, got ${externalLoss}`);
  const trials = opts.trials ?? 4;
  if (!Number.isInteger(trials) || trials < 1) throw new RangeError(`trials must be a positive integer, got ${trials}`);

  // Removed noise per image, sorted; the pool of all of them is N*'s distribution.
  const removed = noisyImages.map((x, i) => {
    const f = predictedImages[i];
    if (f.length !== x.length || x.length === 0) throw new RangeError(`estimateNoise2InfoSigma: image ${i} has ${x.length} noisy values and ${f.length} predictions`);
    const r = new Float64Array(x.length);
    for (let j = 0; j < x.length; j++) r[j] = x[j] - f[j];
    return r;
  });
  let total = 0;
  let sumSquares = 0;
  for (const r of removed) {
    total += r.length;
    for (let j = 0; j < r.length; j++) sumSquares += r[j] * r[j];
  }
  const internalLoss = sumSquares / total;
  const pool = new Float64Array(total);
  let offset = 0;
  for (const r of removed) {
    pool.set(r, offset);
    offset += r.length;
  }
  for (const r of removed) r.sort();

  let matchedSum = 0;
  for (let t = 0; t < trials; t++) {
    for (const r of removed) {
      const sample = new Float64Array(r.length);
      for (let j = 0; j < sample.length; j++) sample[j] = pool[opts.rng.int(total)];
      sample.sort();
      for (let j = 0; j < sample.length; j++) {
        const diff = sample[j] - r[j];
        matchedSum += diff * diff;
      }
    }
  }
  const matchedDistance = matchedSum / (trials * total);
  const sigma = externalLoss + Math.sqrt(Math.max(0, externalLoss * externalLoss + internalLoss - matchedDistance));
  return { sigma, internalLoss, externalLoss, matchedDistance };
}

/** l_ex from arrays: RMS of F(X) - F(X_J^c) over the masked pixels (mask 1). */
export function noise2InfoExternalLoss(prediction: Float32Array, maskedPrediction: Float32Array, mask: Float32Array): number {
  if (prediction.length !== maskedPrediction.length || prediction.length !== mask.length) throw new RangeError('noise2InfoExternalLoss: arrays of different lengths');
  let sum = 0;
  let n = 0;
  for (let i = 0; i < mask.length; i++) {
    if (mask[i] === 0) continue;
    const d = prediction[i] - maskedPrediction[i];
    sum += d * d;
    n++;
  }
  return n === 0 ? 0 : Math.sqrt(sum / n);
}

/** Algorithm 2's update: sigma_loss <- min(sigma_loss, estimate) (non-finite estimates are ignored). */
export function updateNoise2InfoSigma(current: number, estimate: number): number {
  return Number.isFinite(estimate) && estimate < current ? estimate : current;
}

/** Keeps the square root of L_ex differentiable where F(X) = F(X_J^c). */
export const NOISE2INFO_SQRT_EPSILON = 1e-12;

/**
 * The training loss L_in + 2 sigma L_ex (Noise2Same's form, sigma from Algorithm 2), per pixel:
 *   mean((F(X) - X)^2) + 2 sigma sqrt(mean over mask of (F(X) - F(X_J^c))^2).
 * `prediction` = F(X) on the unmasked input, `maskedPrediction` = F(X_J^c) on the masked input
 * (e.g. gridMaskPatch or maskPatch), `noisy` = X, `mask` = J (1 where masked); same shapes.
 * Both predictions carry gradients. A small epsilon keeps the square root differentiable at 0.
 */
export function noise2InfoLoss(prediction: tf.Tensor, maskedPrediction: tf.Tensor, noisy: tf.Tensor, mask: tf.Tensor, sigma: number): tf.Scalar {
  return tf.tidy(() => {
    const internal = tf.mean(tf.square(tf.sub(prediction, noisy)));
    const invariance = tf.div(tf.sum(tf.mul(tf.square(tf.sub(prediction, maskedPrediction)), mask)), tf.maximum(tf.sum(mask), 1));
    const external = tf.sqrt(tf.add(invariance, NOISE2INFO_SQRT_EPSILON));
    return tf.add(internal, tf.mul(2 * sigma, external)) as tf.Scalar;
  });
}
