/**
 * Probabilistic Noise2Void (Krull, Vicar, Prakash, Lalit, Jug 2020): N2V's stratified masking, a
 * U-Net that predicts S samples s_1..s_S of the prior p(s | surroundings) for every pixel (its S
 * output channels), trained on the masked pixels by the likelihood of the noisy value under the
 * noise model, averaged over the samples:
 *
 *   loss = mean over masked pixels of -log (1/S) sum_k p(x | s_k),
 *
 * and denoised by the MMSE estimate of the posterior p(s | x, surroundings) ~ p(x | s) p(s | ...):
 *
 *   E[s | x] = sum_k s_k p(x | s_k) / sum_k p(x | s_k);  --uncertainty: its standard deviation.
 *
 * p(x | s) is the noise model of --prior (methods/likelihood.ts, noise/likelihood.ts): a GMM file is
 * used whole, the other kinds by their Poisson-Gaussian summary. --prior-mean gives the prior's mean
 * (mean of the samples), a plain N2V-like estimate that ignores the pixel's own value.
 */
import * as tf from '@tensorflow/tfjs-core';
import { UsageError } from '../core/errors.js';
import { manifestNoiseLikelihood, requireNoiseModel } from './likelihood.js';
import type { Method } from './method.js';
import { outputLossTraining, stratifiedPatch, unetNetwork } from './shared.js';
import type { NoiseLikelihood } from '../noise/likelihood.js';

/**
 * Prior samples per pixel when --prior-samples is not given. The paper uses 800; 64 keeps the output
 * layer and the likelihood of every sample (S values per pixel) affordable on a CPU backend.
 */
export const DEFAULT_PRIOR_SAMPLES = 64;

/** log p(x | s_k) for every sample: `samples` [..., S], `observed` [..., 1]. */
function sampleLogLikelihoods(likelihood: NoiseLikelihood, samples: tf.Tensor, observed: tf.Tensor): tf.Tensor {
  return likelihood(samples, tf.broadcastTo(observed, samples.shape));
}

/** PN2V's loss on the masked pixels: -log of the samples' mean likelihood. */
export function pn2vLoss(likelihood: NoiseLikelihood, samples: tf.Tensor, observed: tf.Tensor, mask: tf.Tensor): tf.Scalar {
  return tf.tidy(() => {
    const S = samples.shape[samples.rank - 1];
    const logMean = tf.sub(tf.logSumExp(sampleLogLikelihoods(likelihood, samples, observed), -1, true), Math.log(S));
    return tf.div(tf.sum(tf.mul(tf.neg(logMean), mask)), tf.maximum(tf.sum(mask), 1)) as tf.Scalar;
  });
}

/** The posterior's mean and standard deviation over the samples weighed by p(x | s_k) ([..., 1] each). */
export function pn2vPosterior(likelihood: NoiseLikelihood, samples: tf.Tensor, observed: tf.Tensor): { mean: tf.Tensor; std: tf.Tensor } {
  return tf.tidy(() => {
    const weights = tf.softmax(sampleLogLikelihoods(likelihood, samples, observed), -1);
    const mean = tf.sum(tf.mul(weights, samples), -1, true);
    const second = tf.sum(tf.mul(weights, tf.square(samples)), -1, true);
    return { mean, std: tf.sqrt(tf.relu(tf.sub(second, tf.square(mean)))) };
  });
}

export const pn2v: Method = {
  name: 'pn2v',
  summary: 'Probabilistic Noise2Void: N2V masking, S prior samples per pixel (--prior-samples) weighed by the noise model (--prior, required); MMSE',
  paper: {
    authors: 'Krull, Vicar, Prakash, Lalit, Jug',
    title: 'Probabilistic Noise2Void: Unsupervised Content-Aware Denoising',
    venue: 'Frontiers in Computer Science',
    year: 2020,
    url: 'https://doi.org/10.3389/fcomp.2020.00005',
  },
  dims: [2, 3],
  networkKind: 'unet',
  accepts: ['prior', 'masking'],
  masking: 'stratified',
  likelihood: true,
  ownLoss: { name: 'pn2v', refusesLossOption: 'its loss is the noise model likelihood of its prior samples' },
  validateOptions: (opts) => requireNoiseModel('pn2v', opts),
  network(r) {
    const { priorSamples, ...overrides } = r.overrides;
    const S = priorSamples ?? DEFAULT_PRIOR_SAMPLES;
    if (!(Number.isInteger(S) && S >= 2)) throw new UsageError(`--prior-samples must be an integer >= 2, got ${S}`);
    return { ...unetNetwork('pn2v', { ...r, overrides, twoChannels: false }, 'n2v'), outputChannels: S };
  },
  preparePatch: stratifiedPatch,
  training(context) {
    const likelihood = context.noiseLikelihood;
    if (!likelihood) throw new Error('pn2v trains with a noise likelihood; the trainer gave none');
    return outputLossTraining((prediction, targets, masks) => pn2vLoss(likelihood, prediction, targets, masks));
  },
  denoiser(model, manifest, output) {
    if (output === 'sample') throw new UsageError('--write-samples does not apply to pn2v: its samples are per pixel, not images (use --uncertainty)');
    const likelihood = manifestNoiseLikelihood(manifest);
    return (x) =>
      tf.tidy(() => {
        const samples = model.predict(x) as tf.Tensor;
        if (output === 'prior-mean') return tf.mean(samples, -1, true);
        const { mean, std } = pn2vPosterior(likelihood, samples, x);
        return output === 'uncertainty' ? std : mean;
      });
  },
};
