/**
 * The noise models of Gaussian-prior training that come from the data: the training images' pooled
 * noise-level fits, where a learned noise level starts, and the run's per-pixel loss they make.
 */
import * as tf from '@tensorflow/tfjs-core';
import { sampleNoise, screenedSampleVariance } from '../noise/sample.js';
import { gaussianPriorLoss, learnedNoiseVariance, normalisedNoiseVariance, type NoiseSpec } from '../models/bayes.js';
import { maskedLoss } from '../models/losses.js';
import type { Normalisation } from '../models/normalise.js';
import type { PriorSource } from '../models/io.js';
import type { GmmNoiseModel } from '../noise/gmm.js';
import { normalisedNoiseLikelihood, type LikelihoodNoise, type NoiseLikelihood } from '../noise/likelihood.js';
import type { MaskedLossFn } from '../operators/trainSteps.js';
import type { ValidationBatch } from '../methods/method.js';
import type { NlfRecord } from '../noise/nlf.js';

/** One Poisson-Gaussian noise model for all the training images: the mean of their fits' summaries. */
export function pooledNoiseSpec(fits: readonly NlfRecord[]): NoiseSpec {
  const a = fits.reduce((sum, f) => sum + f.a, 0) / fits.length;
  const b = fits.reduce((sum, f) => sum + f.b, 0) / fits.length;
  // A slightly negative slope is fit noise on nearly signal-independent data.
  return { kind: 'poisson-gaussian', a: Math.max(0, a), b };
}

/**
 * Where the learned noise level starts (normalised units): the median over validation patches of
 * each patch's screened residual noise estimate (noise/sample.ts). The likelihood pins sigma_n only
 * from above (the per-pixel prior variance takes up any shortfall) and Adam moves one scalar by about
 * the learning rate a step (log sigma by ~0.16 in 400 steps at 4e-4), so a start far off stays off:
 * half the data's standard deviation, the start before, is 32 on BSD68 (sigma 25) and was still 31.5
 * after 120 steps. Letting sigma move 25x faster was worse (it drifts down with the prior variance: a
 * test problem with sigma 20 ended at 14.2, against 18.5 from this start). Measured on 64x64
 * Train400 patches at sigma 25: per-patch estimates 22-29, median 24.8.
 */
export function initialLearnedSigma(valBatches: readonly ValidationBatch[]): number {
  const estimates: number[] = [];
  for (const batch of valBatches) {
    const [n, ...spatial] = batch.shape;
    const patchShape = spatial.slice(0, -1);
    const per = patchShape.reduce((a, b) => a * b, 1);
    for (let i = 0; i < n; i++) {
      try {
        const sample = sampleNoise({ name: 'validation patch', data: batch.targets.subarray(i * per, (i + 1) * per), shape: patchShape, sampleType: 'float32' });
        const variance = screenedSampleVariance(sample);
        if (variance > 0 && Number.isFinite(variance)) estimates.push(Math.sqrt(variance));
      } catch {
        // A patch with no usable pixel (too small, constant): the others decide.
      }
    }
  }
  if (estimates.length === 0) return 0.5; // half the data's standard deviation: above most noise, below the signal
  estimates.sort((a, b) => a - b);
  return estimates[estimates.length >> 1];
}

export interface RunLoss {
  /** The learned noise level's log sigma (normalised units), trained with the weights; null unless --prior learned. */
  learnedLogSigma: tf.Variable | null;
  /** sigma_n^2 of the prior's noise model, when a Gaussian prior is trained. */
  noiseVariance?: (mu: tf.Tensor) => tf.Tensor;
  /** The per-pixel loss: the Gaussian prior's NLL, or MSE / MAE. */
  maskedLoss: MaskedLossFn;
  /** Likelihood methods' noise model (the GMM whole, when given) and its log p(x | s). */
  likelihoodNoise?: LikelihoodNoise;
  noiseLikelihood?: NoiseLikelihood;
  /** The variables trained besides the network's weights. */
  extraVariables: () => tf.Variable[];
}

/**
 * The run's loss from its noise model. Called after a checkpoint is restored: Adam matches its
 * moments by position, the network's weights first, then the learned log sigma.
 */
export function runLoss(o: {
  priorMode: PriorSource | null;
  priorNoise: NoiseSpec | undefined;
  lossKind: 'mse' | 'mae';
  normalisation: Normalisation;
  /** Where the learned log sigma starts (read only for --prior learned). */
  startLogSigma: () => number;
  variableName: string;
  likelihood: boolean;
  noiseModel?: GmmNoiseModel;
}): RunLoss {
  const learnedLogSigma = o.priorMode === 'learned' ? tf.variable(tf.scalar(o.startLogSigma()), true, o.variableName) : null;
  const noiseVariance =
    learnedLogSigma !== null ? learnedNoiseVariance(learnedLogSigma) : o.priorNoise !== undefined ? normalisedNoiseVariance(o.priorNoise, o.normalisation) : undefined;
  const loss: MaskedLossFn = noiseVariance !== undefined ? gaussianPriorLoss(noiseVariance) : (prediction, target, mask) => maskedLoss(prediction, target, mask, o.lossKind);
  const likelihoodNoise: LikelihoodNoise | undefined =
    o.likelihood && o.priorNoise !== undefined ? { spec: o.priorNoise, ...(o.noiseModel ? { gmm: o.noiseModel } : {}) } : undefined;
  return {
    learnedLogSigma,
    ...(noiseVariance ? { noiseVariance } : {}),
    maskedLoss: loss,
    ...(likelihoodNoise ? { likelihoodNoise, noiseLikelihood: normalisedNoiseLikelihood(likelihoodNoise, o.normalisation) } : {}),
    extraVariables: () => (learnedLogSigma !== null ? [learnedLogSigma] : []),
  };
}
