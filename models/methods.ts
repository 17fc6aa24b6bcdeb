/**
 * What distinguishes the training methods, per patch and per batch: which network, how a patch
 * becomes (network input, target, loss mask), and which loss. pipeline/train.ts runs the same
 * sampling / batching / stepping stream for all of them.
 *
 * | method     | network | input                                  | loss pixels              | loss                     |
 * |------------|---------|----------------------------------------|--------------------------|--------------------------|
 * | n2v        | U-Net   | stratified pixels replaced (N2V)       | the replaced pixels      | MSE / MAE / prior NLL    |
 * | n2v2       | N2V2    | same, median replacement               | the replaced pixels      | same                     |
 * | structn2v  | U-Net   | + a structuring element around each    | the centres              | same                     |
 * | noise2self | U-Net   | one grid phase, donut mean             | that phase               | same                     |
 * | laine19    | laine19 | the patch (blind by architecture)      | every pixel              | MSE / prior NLL          |
 * | dbsn       | D-BSN   | the patch (blind by architecture)      | every pixel              | D-BSN's NLL (2 channels) |
 * | noise2info | U-Net   | the patch and its grid-masked copy     | all (L_in), phase (L_ex) | L_in + 2 sigma L_ex      |
 * | n2n        | U-Net   | the patch                              | every pixel, 2nd noisy   | MSE / MAE                |
 * | care       | U-Net   | the patch                              | every pixel, clean       | MSE / MAE                |
 */
import * as tf from '@tensorflow/tfjs-core';
import { Rng } from '../core/rng.js';
import type { Shape } from '../core/volume.js';
import { augmentPatch } from './augment.js';
import { gridMaskPatch, gridPhaseCount, gridPhaseForStep } from './gridMask.js';
import { maskPatch, type MaskOptions } from './masking.js';
import type { MethodName } from './io.js';
import type { NetworkKind } from './network.js';
import { structMaskPatch, type StructuringElement } from './structMask.js';

export const methodDescriptions: Record<MethodName, string> = {
  n2v: 'Noise2Void: U-Net, stratified masking, loss on the masked pixels',
  n2v2: 'N2V2: blur-pool U-Net without the top skip, median replacement',
  structn2v: 'structN2V: N2V with a structuring element masked through the blind spot (correlated noise)',
  noise2self: 'Noise2Self: J-invariant grid masking with donut-mean replacement',
  laine19: 'Laine et al. 2019: blind spot by architecture (rotated half-plane branches), every pixel in the loss',
  dbsn: 'D-BSN: centrally masked + dilated convolutions, trained with the CNN_est loss (noise variance per pixel)',
  noise2info: 'Noise2Info: L_in + 2 sigma L_ex with sigma estimated each validation (sorted matching)',
  n2n: 'Noise2Noise: pairs of noisy images (--targets: the second noisy shots)',
  care: 'CARE: supervised pairs (--targets: the clean images)',
};

export function networkKindFor(method: MethodName): NetworkKind {
  return method === 'laine19' ? 'laine19' : method === 'dbsn' ? 'dbsn' : 'unet';
}

/** Methods whose network is blind by architecture: no masking, every pixel in the loss. */
export function isArchitecturalBlindSpot(method: MethodName): boolean {
  return method === 'laine19' || method === 'dbsn';
}

/** Methods that train on (input, target) image pairs. */
export function isPairedMethod(method: MethodName): boolean {
  return method === 'n2n' || method === 'care';
}

/** Methods whose inputs are grid-masked (Noise2Self's J-invariant phases). */
export function usesGridMasking(method: MethodName): boolean {
  return method === 'noise2self' || method === 'noise2info';
}

/**
 * Methods that mask stratified pixels with MaskOptions (fraction, replacement strategy, window):
 * the rest mask nothing (architectural blind spot, paired) or mask grid phases (noise2self, noise2info).
 */
export function usesStratifiedMasking(method: MethodName): boolean {
  return method === 'n2v' || method === 'n2v2' || method === 'structn2v';
}

/** Methods that can train a Gaussian prior (--prior): the blind-spot ones; D-BSN always has one. */
export function acceptsPrior(method: MethodName): boolean {
  return !isPairedMethod(method) && method !== 'noise2info';
}

export const defaultGridSide = 4;

/** A normalised training patch, before masking; `target` only for paired methods. */
export interface MethodPatch {
  step: number;
  shape: Shape;
  data: Float32Array;
  target?: Float32Array;
  rng: Rng;
}

/** What the network sees, what it is scored against, and where (0/1). */
export interface PreparedPatch {
  input: Float32Array;
  target: Float32Array;
  mask: Float32Array;
}

export interface PatchPreparation {
  method: MethodName;
  masking: MaskOptions;
  /** structn2v's element (lifted to the data's dims). */
  structMask?: StructuringElement;
  /** Grid side for noise2self / noise2info. */
  grid: number;
  /** Seed of the grid-phase schedule. */
  seed: number;
}

/** A method's patch -> (input, target, mask), drawing any randomness from the patch's own rng. */
export function preparePatch(p: MethodPatch, prep: PatchPreparation): PreparedPatch {
  const { method } = prep;
  if (isPairedMethod(method)) {
    if (!p.target) throw new Error(`${method} needs a target patch`);
    return { input: p.data, target: p.target, mask: new Float32Array(p.data.length).fill(1) };
  }
  if (isArchitecturalBlindSpot(method)) return { input: p.data, target: p.data, mask: new Float32Array(p.data.length).fill(1) };
  if (usesGridMasking(method)) {
    const dims = p.shape.length as 2 | 3;
    const { input, mask } = gridMaskPatch(p.data, p.shape, prep.grid, gridPhaseForStep(p.step, prep.grid, dims, prep.seed));
    return { input, target: p.data, mask };
  }
  if (method === 'structn2v') {
    if (!prep.structMask) throw new Error('structn2v needs a structuring element');
    const { input, mask } = structMaskPatch(p.data, p.shape, prep.structMask, prep.masking, p.rng);
    return { input, target: p.data, mask };
  }
  const { input, mask } = maskPatch(p.data, p.shape, prep.masking, p.rng);
  return { input, target: p.data, mask };
}

/**
 * Random flips / 90-degree rotations of a patch and (paired methods) its target, the same transform
 * for both: the target's copy replays the generator state the input's draw used.
 */
export function augmentMethodPatch<T extends MethodPatch>(p: T, enabled: boolean): T {
  if (!enabled) return p;
  if (!p.target) return { ...p, data: augmentPatch(p.data, p.shape, p.rng) };
  const replay = new Rng(0);
  replay.setState(p.rng.getState());
  const data = augmentPatch(p.data, p.shape, p.rng);
  return { ...p, data, target: augmentPatch(p.target, p.shape, replay) };
}

/** Steps per full cycle of grid phases (every pixel masked once): k^dims. */
export function gridCycle(k: number, dims: 2 | 3): number {
  return gridPhaseCount(k, dims);
}

/**
 * A loss over one batch given a way to run the network: most methods run it once on the input
 * (a MaskedLossFn on its prediction); noise2info also runs it on the unmasked patch.
 */
export type BatchLossFn = (apply: (x: tf.Tensor) => tf.Tensor, inputs: tf.Tensor, targets: tf.Tensor, masks: tf.Tensor) => tf.Scalar;

/**
 * sigma_n^2 from a trainable log sigma (normalised units): the "learned" noise of Laine et al., a
 * global parameter trained jointly with the network. It is identifiable because it is shared by
 * every pixel while the prior variance is per pixel.
 */
export function learnedNoiseVariance(logSigma: tf.Variable): (mu: tf.Tensor) => tf.Tensor {
  return (mu) => tf.mul(tf.onesLike(mu), tf.exp(tf.mul(2, logSigma)));
}
