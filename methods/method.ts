/**
 * The one interface every training method implements (one file per method in methods/, listed in
 * methods/registry.ts). pipeline/train.ts is the loop (sampling, batching, stepping, validation,
 * checkpoints, resume) and calls these members in a fixed order without knowing which method it
 * runs; the model folder, prediction and the CLI ask the registry the same way. A method owns:
 *
 * - what it is: `name`, `summary` (the --help and README line), `paper` (citation, also for the
 *   bioimage.io export), the `dims` it supports;
 * - its options: `accepts` (which method-specific train options apply; the messages for the others
 *   come from methods/options.ts, listing the methods that take them) and `validateOptions` for
 *   its own requirements;
 * - its network: `network(request)` (a NetworkConfig of models/network.ts);
 * - its data: `preparePatch` (a normalised patch -> network input, target, loss mask);
 * - its loss and extra state: `lossName` (recorded in the manifest), `training(context)` (the batch
 *   loss, a hook at every validation, what it records in the manifest and checkpoints);
 * - after training: `afterTraining` (the output-offset correction of point-estimate models);
 * - at inference: `denoiser` (how its network's output becomes the denoised value: the plain
 *   prediction, or a Gaussian prior's posterior mean / standard deviation / prior mean).
 */
import type * as tf from '@tensorflow/tfjs-core';
import type * as tfl from '@tensorflow/tfjs-layers';
import type { Rng } from '../core/rng.js';
import type { Shape } from '../core/volume.js';
import type { GradientBatch } from '../engines/engine.js';
import type { NoiseSpec } from '../models/bayes.js';
import type { MethodSettings, ModelManifest, PriorSource, TrainingRecord } from '../models/io.js';
import type { MaskOptions, ReplacementStrategy } from '../models/masking.js';
import type { NetworkConfig, NetworkKind } from '../models/network.js';
import type { StructuringElement } from '../models/structMask.js';
import type { UNetInit, UNetWidths } from '../models/unet.js';
import type { NoiseLikelihood } from '../noise/likelihood.js';
import type { TileSpec } from '../operators/tileGrid.js';
import type { BatchLossFn, MaskedLossFn } from '../operators/trainSteps.js';

/**
 * What `blindspot denoise` writes: the denoised image, its uncertainty, (prior models) the prior mean
 * alone, or (sampling methods) one posterior sample.
 */
export type DenoiseOutput = 'denoised' | 'uncertainty' | 'prior-mean' | 'sample';

/** Where a method comes from: for the README's table, `blindspot train --help` and model exports. */
export interface MethodPaper {
  authors: string;
  title: string;
  venue: string;
  year: number;
  url: string;
}

/** Train options that belong to some methods only (MethodOption names them). */
export type MethodOption = 'targets' | 'structMask' | 'grid' | 'prior' | 'masking' | 'loss';

/** The train options a method judges (a subset of pipeline/train.ts TrainOptions, same names). */
export interface MethodOptions {
  structMask?: string | StructuringElement;
  grid?: number;
  prior?: NoiseSpec | 'learned' | 'nlf';
  maskFraction?: number;
  strategy?: ReplacementStrategy;
  maskRadius?: number;
  loss?: 'mse' | 'mae';
}

/** What a method's network is built from: the trainer's dims, size choice and the user's overrides. */
export interface NetworkRequest {
  dims: 2 | 3;
  size: 'paper' | 'small';
  overrides: NetworkOverrides;
  batchSize: number;
  /** A Gaussian prior is trained: the network predicts (mean, log variance). */
  twoChannels: boolean;
}

export interface NetworkOverrides {
  depth?: number;
  filters?: number;
  kernelSize?: number;
  batchNorm?: boolean;
  /** U-Net: convolution widths, 'halving' (CSBDeep's, default) or 'level' (the PyTorch reference's); models/unet.ts. */
  widths?: UNetWidths;
  /** U-Net: initial weights, 'torch' (PyTorch's Conv default; the default) or 'glorot' (Keras'); models/unet.ts. */
  init?: UNetInit;
  /** U-Net: batch-norm epsilon (default 1e-3, Keras'; PyTorch's 1e-5). */
  batchNormEpsilon?: number;
  /** D-BSN: residual dilated blocks per branch. */
  blocks?: number;
  /** PN2V: samples of the prior the network predicts per pixel (its output channels). */
  priorSamples?: number;
  /** DivNoising: channels of the VAE's latent code. */
  latentChannels?: number;
}

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

/** Everything a method's preparePatch may use, fixed for a run. */
export interface PatchPreparation {
  method: Method;
  masking: MaskOptions;
  /** structn2v's element (lifted to the data's dims). */
  structMask?: StructuringElement;
  /** Grid side of the grid-masking methods. */
  grid: number;
  /** Seed of the grid-phase schedule. */
  seed: number;
}

/** A fixed batch of prepared validation patches (NHWC / NDHWC shape, one channel). */
export interface ValidationBatch {
  shape: number[];
  inputs: Float32Array;
  targets: Float32Array;
  masks: Float32Array;
}

/** Events a method's hooks report through the trainer (pipeline/train.ts TrainEvent includes them). */
export type MethodEvent = { type: 'noise2info-sigma'; step: number; estimate: number; sigma: number };

/**
 * A validation of its own: the validation patches' preparation and the loss on them. The best
 * validation picks the model the folder keeps, and drives the plateau schedule.
 */
export interface MethodValidation {
  /** What the manifest records as `training.validationLoss`. */
  readonly name: string;
  preparePatch(p: MethodPatch, prep: PatchPreparation): PreparedPatch;
  loss(context: TrainingContext): BatchLossFn;
}

/** What the trainer hands a method when a run starts (or resumes). */
export interface TrainingContext {
  seed: number;
  grid: number;
  /** The per-pixel loss the trainer chose from the options: the Gaussian prior's NLL, or MSE / MAE. */
  maskedLoss: MaskedLossFn;
  /** sigma_n^2 of the prior's noise model (normalised units), when one is trained. */
  noiseVariance?: (mu: tf.Tensor) => tf.Tensor;
  /** log p(x | s) of the noise model (normalised units), for methods with `likelihood` set. */
  noiseLikelihood?: NoiseLikelihood;
  /** The checkpoint's state file when the run resumes (the method reads back what checkpointState wrote). */
  saved?: Record<string, unknown>;
}

/**
 * A batch loss that equals, in value and gradient, a sum of scaled masked losses on rewritten
 * batches plus a constant, given the network's outputs on some inputs of the batch taken without
 * gradient (targets and weights made from them). Those forward passes run first, in the order the
 * method's batchLoss applies the network on tfjs, so batch norm's moving statistics move in that
 * order; then each term's pass, which moves them again unless it repeats a forward pass.
 */
export interface PlainLossRewrite {
  /** The per-pixel loss (the trainer's --loss) the identity holds for. */
  loss: 'mse';
  /** The inputs (of the batch's shape) whose outputs the rewrite reads, in batchLoss' order. */
  forwardInputs(batch: GradientBatch): Float32Array[];
  rewrite(batch: GradientBatch, predictions: readonly Float32Array[]): { terms: RewrittenLossTerm[]; offset: number };
}

/** One masked loss of a rewritten batch loss; its mask may weight pixels (MSE: sum(mask * e) / max(sum(mask), 1)). */
export interface RewrittenLossTerm {
  batch: GradientBatch;
  scale: number;
  /** The pass runs the network on the inputs of a forward pass again: the moving statistics stay where that one left them. */
  repeatsForward: boolean;
}

/** The per-run part of a method: its loss over a batch and its hooks, with any state they keep. */
export interface MethodTraining {
  batchLoss: BatchLossFn;
  /**
   * How the batch loss reduces to the context's masked loss on one prediction, so that an engine
   * other than tfjs may compute it and its gradients (TrainOptions.trainEngine): 'as-is' when it is
   * that loss on the batch itself, or a rewrite of the batch. Absent: only tfjs trains the method.
   */
  plainMaskedLoss?: 'as-is' | PlainLossRewrite;
  /**
   * The batch loss is this loss on the network's output on the batch's inputs (one pass): an engine
   * other than tfjs may run the network's passes while tfjs computes this loss on the output (a
   * Gaussian prior's NLL with a learned noise level, PN2V's likelihood). Absent: not of that form.
   */
  outputLoss?: MaskedLossFn;
  /**
   * After each validation loss is computed: updates the method's state; fields for the history
   * record, events. Asynchronous because it reads tensors (webgpu has no synchronous read in Node).
   */
  onValidation?(v: { model: tfl.LayersModel; batches: readonly ValidationBatch[]; step: number }): Promise<{ record?: Partial<TrainingRecord>; events?: MethodEvent[] }>;
  /** What the manifest's methodSettings records of the run's state (merged with the method's settings). */
  settings?(): MethodSettings;
  /** Saved in the checkpoint's state file (keys of their own), read back through TrainingContext.saved. */
  checkpointState?(): Record<string, unknown>;
}

export interface Method {
  readonly name: string;
  /** One line (two at most) for --help and the README's table. */
  readonly summary: string;
  readonly paper: MethodPaper;
  readonly dims: readonly (2 | 3)[];
  /** Which network family it trains (models/network.ts). */
  readonly networkKind: NetworkKind;
  /** The method-specific train options it takes; the others are refused (methods/options.ts). */
  readonly accepts: readonly MethodOption[];
  /** How the input is masked: stratified pixels (MaskOptions), grid phases, or nothing. */
  readonly masking: 'stratified' | 'grid' | 'none';
  /** Paired methods: what their --targets are ("clean images"), for messages. */
  readonly targets?: string;
  /** Methods whose network always predicts a Gaussian (mean, variance): the default noise model's source. */
  readonly defaultPrior?: PriorSource;
  /** The replacement strategy when --strategy is not given (stratified masking only). */
  readonly defaultStrategy?: ReplacementStrategy;
  /** Methods with a loss of their own: its manifest name, and why --loss does not apply (absent: --loss is accepted). */
  readonly ownLoss?: { name: string; refusesLossOption?: string };
  /**
   * Its loss and denoiser use the noise model's full likelihood p(x | s) (PN2V, DivNoising): --prior
   * is required and names that noise model (a GMM file is used whole); the network is not a
   * Gaussian prior, and the manifest records the noise model as `noiseModel`.
   */
  readonly likelihood?: boolean;
  /**
   * How validation patches are prepared and scored when not like the training batches: for a method
   * whose own loss does not follow the denoised quality (absent: validation uses the training loss).
   */
  readonly validation?: MethodValidation;
  /** Checks its own requirements (after the generic option checks); UsageError with the fix. */
  validateOptions?(opts: MethodOptions): void;
  /** Run settings resolved from the options (structn2v's element), before any data is read. */
  patchSettings?(opts: MethodOptions, dims: 2 | 3): Pick<PatchPreparation, 'structMask'>;
  network(request: NetworkRequest): NetworkConfig;
  /** A patch -> (input, target, mask), drawing any randomness from the patch's own rng. */
  preparePatch(p: MethodPatch, prep: PatchPreparation): PreparedPatch;
  /** Settings recorded in the manifest from the options (the run's state comes from MethodTraining.settings). */
  settings?(opts: MethodOptions, prep: PatchPreparation): MethodSettings;
  training(context: TrainingContext): MethodTraining;
  /**
   * Point-estimate models after training: corrects the best model in place and returns the output
   * offset taken out (normalised units). Not called for Gaussian-prior models. Asynchronous: it reads tensors.
   */
  afterTraining?(model: tfl.LayersModel, batches: readonly ValidationBatch[]): Promise<number>;
  /**
   * The one-channel function denoise runs on normalised tiles for a model of this method. Sampling
   * methods read `sampling` and may seed from the tiles' coordinates (TileFunction's second argument).
   */
  denoiser(model: tfl.LayersModel, manifest: ModelManifest, output: DenoiseOutput, sampling?: SamplingOptions): tfl.LayersModel | TileFunction;
}

/**
 * A tile function: NHWC / NDHWC in, same shape out. `tiles` (when the caller knows them) are the
 * batch's tiles in order, so that a sampling method can seed each from its position in the image.
 */
export type TileFunction = (x: tf.Tensor, tiles?: readonly TileSpec[]) => tf.Tensor;

/** How a sampling method (DivNoising) draws posterior samples at denoise. */
export interface SamplingOptions {
  /** Samples averaged for the MMSE and the standard deviation. */
  samples: number;
  /** Base seed; each sample's noise is a function of it, the sample index and the position in the image. */
  seed: number;
  /** For output 'sample': which sample (0-based). */
  sampleIndex?: number;
}
