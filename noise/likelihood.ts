/**
 * The noise model as a likelihood log p(x | s) on normalised tensors, for the methods whose loss and
 * denoiser weigh clean-signal candidates s by how well they explain the noisy value x (PN2V,
 * DivNoising). The model is the Gaussian mixture (noise/gmm.ts) when one is given, else a Gaussian
 * of variance sigma_n^2(s) from a NoiseSpec (a Gaussian sigma, or var = a s + b: the
 * Poisson-Gaussian summary of a calibrated histogram, an NLF or a GMM).
 *
 * Units: normalised n = (raw - offset) / scale, so log p_n(x_n | s_n) = log p_raw(x | s) + log scale.
 * The constant does not move gradients or the weights of candidates; it keeps the loss a density.
 */
import * as tf from '@tensorflow/tfjs-core';
import { normalisedNoiseVariance, type NoiseSpec } from '../models/bayes.js';
import type { Normalisation } from '../models/normalise.js';
import { gmmCoefficientTensors, gmmLogLikelihood, type GmmNoiseModel } from './gmm.js';

/** log p(x | s) elementwise (same shapes in and out), normalised units; differentiable in s. */
export type NoiseLikelihood = (signal: tf.Tensor, observation: tf.Tensor) => tf.Tensor;

/** What a likelihood method's manifest records of its noise model. */
export interface LikelihoodNoise {
  /** The Gaussian / Poisson-Gaussian noise (always present: the GMM's summary when a GMM is given). */
  spec: NoiseSpec;
  /** The full mixture, when the noise model is a GMM. */
  gmm?: GmmNoiseModel;
}

/** log p(x | s) in normalised units for a noise model given in input (raw) units. */
export function normalisedNoiseLikelihood(noise: LikelihoodNoise, norm: Normalisation): NoiseLikelihood {
  const logScale = Math.log(norm.scale);
  if (noise.gmm) {
    const gmm = noise.gmm;
    // Constants made once (kept out of tidy scopes) and reused on every call.
    const coefficients = gmmCoefficientTensors(gmm);
    for (const t of [coefficients.weight, coefficients.offset, coefficients.variance]) tf.keep(t);
    return (signal, observation) =>
      tf.tidy(() => {
        const raw = (n: tf.Tensor): tf.Tensor => tf.add(tf.mul(n, norm.scale), norm.offset);
        return tf.add(gmmLogLikelihood(gmm, raw(signal), raw(observation), coefficients), logScale);
      });
  }
  const variance = normalisedNoiseVariance(noise.spec, norm);
  return (signal, observation) =>
    tf.tidy(() => {
      const v = variance(signal);
      return tf.neg(tf.add(tf.mul(0.5, tf.log(tf.mul(v, 2 * Math.PI))), tf.div(tf.square(tf.sub(observation, signal)), tf.mul(v, 2))));
    });
}
