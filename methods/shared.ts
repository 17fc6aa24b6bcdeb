/**
 * Building blocks the method files share: patch preparations (stratified, grid, whole patch,
 * pairs), the networks of each family with the user's overrides, the default training (one
 * masked loss per batch), the output-offset correction and the default denoiser. A method file
 * composes these; a new method with a new idea writes its own.
 */
import * as tf from '@tensorflow/tfjs-core';
import type * as tfl from '@tensorflow/tfjs-layers';
import type { LayersModel } from '@tensorflow/tfjs-layers';
import { UsageError } from '../core/errors.js';
import { normalisedNoiseVariance, priorTileModel, type PriorOutput } from '../models/bayes.js';
import type { ModelManifest } from '../models/io.js';
import { gridMaskPatch, gridPhaseForStep } from '../models/gridMask.js';
import { maskPatch } from '../models/masking.js';
import { defaultNetwork, type NetworkConfig, type NetworkKind, type UNetNetwork } from '../models/network.js';
import { toBatchLoss, type MaskedLossFn } from '../operators/trainSteps.js';
import type { DenoiseOutput, Method, MethodPatch, MethodValidation, MethodTraining, NetworkOverrides, NetworkRequest, PatchPreparation, PreparedPatch, TrainingContext, ValidationBatch } from './method.js';

/** Grid side of the grid-masking methods when --grid is not given: 16 phases in 2D, 64 in 3D. */
export const defaultGridSide = 4;

/** N2V's stratified masking: pixels replaced by a neighbour (MaskOptions), the loss on them. */
export function stratifiedPatch(p: MethodPatch, prep: PatchPreparation): PreparedPatch {
  const { input, mask } = maskPatch(p.data, p.shape, prep.masking, p.rng);
  return { input, target: p.data, mask };
}

/** Noise2Self's J-invariant masking: one phase of the k^dims grid per step, donut-mean replacement. */
export function gridPatch(p: MethodPatch, prep: PatchPreparation): PreparedPatch {
  const dims = p.shape.length as 2 | 3;
  const { input, mask } = gridMaskPatch(p.data, p.shape, prep.grid, gridPhaseForStep(p.step, prep.grid, dims, prep.seed));
  return { input, target: p.data, mask };
}

/** Networks blind by architecture: the patch as it is, every pixel in the loss. */
export function wholePatch(p: MethodPatch): PreparedPatch {
  return { input: p.data, target: p.data, mask: new Float32Array(p.data.length).fill(1) };
}

/** Paired methods: the patch against its target patch, every pixel in the loss. */
export function pairedPatch(p: MethodPatch, prep: PatchPreparation): PreparedPatch {
  if (!p.target) throw new Error(`${prep.method.name} needs a target patch`);
  return { input: p.data, target: p.target, mask: new Float32Array(p.data.length).fill(1) };
}

/**
 * Validation by the J-invariant loss (Batson & Royer 2019): each validation patch has one grid
 * phase replaced by its donut mean, and the network's output there is scored against the noisy
 * values. Its expectation is the output's error against the clean signal plus the noise variance,
 * so it ranks models by quality for a network that is not blind by construction. It is the loss
 * `blindspot calibrate` ranks classical filters by.
 */
export const jInvariantValidation: MethodValidation = {
  name: 'j-invariant',
  preparePatch: gridPatch,
  loss: (context) => plainTraining(context).batchLoss,
};

/** A method whose batch loss is `loss` on the network's one output on the batch's inputs. */
export function outputLossTraining(loss: MaskedLossFn): MethodTraining {
  return { batchLoss: toBatchLoss(loss), outputLoss: loss };
}

/** The default training: one masked loss (the trainer's MSE / MAE / prior NLL) on one prediction per batch. */
export function plainTraining(context: TrainingContext): MethodTraining {
  return { ...outputLossTraining(context.maskedLoss), plainMaskedLoss: 'as-is' };
}

/**
 * The one-channel network `denoise` runs on normalised tiles for a loaded model: the model itself
 * for plain blind-spot models; for Gaussian-prior models the posterior mean, the posterior standard
 * deviation ('uncertainty', normalised units: multiply by the normalisation scale, add no offset)
 * or the prior mean.
 */
function denoisingTileModel(model: LayersModel, manifest: ModelManifest, output: DenoiseOutput = 'denoised'): LayersModel | ((x: tf.Tensor) => tf.Tensor) {
  if (output === 'sample') throw new UsageError(`--write-samples needs a model of a sampling method (divnoising); this one is ${manifest.method}`);
  if (!manifest.prior) {
    if (output !== 'denoised') {
      throw new UsageError(`${output === 'uncertainty' ? '--uncertainty' : '--prior-mean'} needs a model trained with a Gaussian prior (blindspot train --prior ...); this one is plain ${manifest.method}`);
    }
    return model;
  }
  const noiseVariance = normalisedNoiseVariance(manifest.prior.noise, manifest.normalisation);
  const which: PriorOutput = output === 'denoised' ? 'posterior-mean' : output === 'uncertainty' ? 'posterior-std' : 'prior-mean';
  return priorTileModel(model, noiseVariance, which);
}

/** The default denoiser: the network itself, or a Gaussian prior's posterior (models/bayes.ts). */
export const priorOrPlainDenoiser: Method['denoiser'] = (model, manifest, output) => denoisingTileModel(model, manifest, output);

/** Which overrides (--depth, --filters, ...) each network family takes. */
const networkOptions: Record<NetworkKind, readonly (keyof NetworkOverrides)[]> = {
  unet: ['depth', 'filters', 'kernelSize', 'batchNorm', 'widths', 'init', 'batchNormEpsilon'],
  laine19: ['depth', 'filters'],
  dbsn: ['filters', 'blocks'],
  vae: ['depth', 'filters', 'latentChannels'],
};

/**
 * Below this batch size the U-Net trains without batch norm unless asked: its statistics from a few
 * patches of different images differ from image to image, and a network trained on them is biased
 * at inference (moving statistics). Measured (bench:methods, 400 steps x batch 4, BSD68 sigma 25):
 * n2v 23.76 -> 25.56 dB and n2v2 21.63 -> 25.64 dB without it; the output's mean offset fell from
 * +5.1 / +10.9 to -0.6 / +2.0 grey levels. N2V's published setting (batch 128) keeps it.
 */
export const minBatchSizeForBatchNorm = 16;

/** Refuses overrides the method's network family does not take, naming the ones it does. */
function checkNetworkOverrides(method: string, kind: NetworkKind, overrides: NetworkOverrides): void {
  for (const [key, value] of Object.entries(overrides)) {
    if (value === undefined) continue;
    if (!networkOptions[kind].includes(key as keyof NetworkOverrides)) {
      const flag = `--${key.replace(/[A-Z]/g, (c) => `-${c.toLowerCase()}`)}`.replace('--batch-norm', '--no-batch-norm');
      throw new UsageError(`${flag} does not apply to --method ${method} (its network takes ${networkOptions[kind].map((k) => k.replace(/[A-Z]/g, (c) => `-${c.toLowerCase()}`)).join(', ')})`);
    }
  }
}

/** A U-Net (N2V's, or N2V2's blur-pool variant without the top skip) of the default size with the overrides. */
export function unetNetwork(method: string, r: NetworkRequest, variant: 'n2v' | 'n2v2'): UNetNetwork {
  checkNetworkOverrides(method, 'unet', r.overrides);
  const base = defaultNetwork('unet', r.dims, r.size);
  if (base.kind !== undefined && base.kind !== 'unet') throw new Error('defaultNetwork returned another kind');
  const outputs = r.twoChannels ? { outputChannels: 2 } : {};
  const variantConfig = variant === 'n2v2' ? ({ variant: 'n2v2', blurPool: 'centred' } as const) : ({ variant: 'n2v' } as const);
  return { ...base, batchNorm: r.batchSize >= minBatchSizeForBatchNorm, ...pick(r.overrides, ['depth', 'filters', 'kernelSize', 'batchNorm', 'widths', 'init', 'batchNormEpsilon']), dims: r.dims, ...variantConfig, ...outputs };
}

/** Laine et al.'s four-branch blind-spot network with the overrides. */
export function laine19Network(method: string, r: NetworkRequest): NetworkConfig {
  checkNetworkOverrides(method, 'laine19', r.overrides);
  const base = defaultNetwork('laine19', r.dims, r.size);
  const outputs = r.twoChannels ? { outputChannels: 2 } : {};
  return { ...base, ...pick(r.overrides, ['depth', 'filters']), dims: r.dims, ...outputs } as NetworkConfig;
}

/** D-BSN (always two outputs: mean and log variance) with the overrides. */
export function dbsnNetwork(method: string, r: NetworkRequest): NetworkConfig {
  checkNetworkOverrides(method, 'dbsn', r.overrides);
  const base = defaultNetwork('dbsn', r.dims, r.size);
  return { ...base, ...pick(r.overrides, ['filters', 'blocks']), dims: r.dims, outputChannels: 2 } as NetworkConfig;
}

/** DivNoising's VAE (models/vae.ts) with the overrides. */
export function vaeNetwork(method: string, r: NetworkRequest): NetworkConfig {
  checkNetworkOverrides(method, 'vae', r.overrides);
  const base = defaultNetwork('vae', r.dims, r.size);
  return { ...base, ...pick(r.overrides, ['depth', 'filters', 'latentChannels']), dims: r.dims } as NetworkConfig;
}

function pick<T extends object, K extends keyof T>(o: T, keys: readonly K[]): Partial<Pick<T, K>> {
  const out: Partial<Pick<T, K>> = {};
  for (const k of keys) if (o[k] !== undefined) out[k] = o[k];
  return out;
}

/**
 * Subtracts from the output layer's bias the network's mean offset on the validation patches, run
 * as at inference (unmasked: `from` is the patch the network sees at inference, 'targets' for the
 * masked methods, 'inputs' for n2n / care), against their targets; returns that offset (normalised
 * units). A denoiser of zero-mean noise keeps each image's mean, but a short training leaves an
 * image-wide offset that changes with the seed (N2V2, 400 x 4: -6.8 to +2.0 grey levels on BSD68,
 * about the same on Set12: mostly the network's, not the image's). Measured after it: -1.9 to -1.1;
 * the patches stand for an image only to within 1-3 grey levels (16 patches of 64x64 there).
 */
export async function removeOutputOffset(model: tfl.LayersModel, batches: readonly ValidationBatch[], from: 'inputs' | 'targets'): Promise<number> {
  let sum = 0;
  let count = 0;
  for (const b of batches) {
    const batchSum = tf.tidy(() => {
      const prediction = model.predict(tf.tensor(b[from], b.shape)) as tf.Tensor;
      return tf.sum(tf.sub(prediction, tf.tensor(b.targets, b.shape)));
    });
    // Read asynchronously: webgpu cannot read a tensor synchronously in Node.
    sum += (await batchSum.data())[0];
    batchSum.dispose();
    count += b.targets.length;
  }
  const offset = count > 0 ? sum / count : 0;
  const output = model.getLayer('output');
  const [kernel, bias] = output.getWeights();
  if (bias === undefined) throw new Error(`the ${model.name} network's output layer has no bias to correct`);
  const corrected = tf.sub(bias, offset);
  output.setWeights([kernel, corrected]);
  corrected.dispose();
  return offset;
}

/** The after-training hook of the masked methods: the offset of the unmasked patches against themselves. */
export const removeOffsetOnNoisy: NonNullable<Method['afterTraining']> = (model, batches) => removeOutputOffset(model, batches, 'targets');

/** The after-training hook of the paired methods: the offset of the inputs against their targets. */
export const removeOffsetOnPairs: NonNullable<Method['afterTraining']> = (model, batches) => removeOutputOffset(model, batches, 'inputs');
