/**
 * Training of every method (methods/registry.ts; the loop calls the Method interface and names
 * none): random patches -> augmentation -> the method's patch preparation -> batches -> optimiser steps, with validation, reduce-on-plateau, best-model selection, checkpoints and resume.
 * Patches come from in-memory volumes, or (with `sources`) stream from chunked arrays of any size:
 * random chunk-aligned regions through a byte-bounded chunk cache, normalisation statistics from a
 * seeded sample of chunks, the producer at most `aheadBatches` batches in front of the model.
 * n2n / care pair each input with a target (files by sorted name, or streamed sources the same way):
 * the same patch of both, the same augmentation, the inputs' normalisation for both.
 */
import { promises as fs } from 'node:fs';
import path from 'node:path';
import { type OperatorFunction, Subject, lastValueFrom, map, tap, defaultIfEmpty } from 'rxjs';
import * as tf from '@tensorflow/tfjs-core';
import type * as tfl from '@tensorflow/tfjs-layers';
import { InputError, OutputError, UsageError } from '../core/errors.js';
import { Rng } from '../core/rng.js';
import type { Shape, Volume } from '../core/volume.js';
import { buildNetwork, defaultNetwork, describeNetwork, networkGeometry, type NetworkConfig } from '../models/network.js';
import { computeNormalisation, normalise, type Normalisation } from '../models/normalise.js';
import { defaultMaskOptions, type MaskOptions, type ReplacementStrategy } from '../models/masking.js';
import { randomPatch } from '../models/patches.js';
import { maskedLoss } from '../models/losses.js';
import { fitNoiseInWorkers } from '../workers/noisePool.js';
import { sampleNoise, screenedSampleVariance } from '../noise/sample.js';
import { gaussianPriorLoss, learnedNoiseVariance, normalisedNoiseVariance, validateNoiseSpec, type NoiseSpec } from '../models/bayes.js';
import { createAdam } from '../models/optimizer.js';
import type { StructuringElement } from '../models/structMask.js';
import { augmentMethodPatch } from '../models/augment.js';
import { normalisedNoiseLikelihood, type LikelihoodNoise } from '../noise/likelihood.js';
import type { GmmNoiseModel } from '../noise/gmm.js';
import type { Method, MethodEvent, MethodPatch, NetworkOverrides, PatchPreparation, PreparedPatch, ValidationBatch } from '../methods/method.js';
import { defaultMethodName, getMethod } from '../methods/registry.js';
import { validateMethodOptions } from '../methods/options.js';
import { defaultGridSide, minBatchSizeForBatchNorm } from '../methods/shared.js';
import type { NlfRecord } from '../noise/nlf.js';
import {
  MANIFEST_JSON,
  loadModelFolder,
  modelFromFiles,
  modelToFiles,
  saveModelFolder,
  writeFilesAtomically,
  MODEL_JSON,
  WEIGHTS_BIN,
  type MethodName,
  type MethodSettings,
  type ModelManifest,
  type PriorSource,
  type TrainingRecord,
} from '../models/io.js';
import { samplePatches, mixSeed, randomPatchPair, type PatchSample } from '../operators/samplePatches.js';
import {
  regionBytes,
  regionStepSampler,
  sampleNormalisation,
  sampleRegions,
  sourceBounds,
  type BackgroundFilter,
  type ChunkedSource,
  type RegionEvent,
  type RegionSamplingStats,
  type SampledNormalisation,
  checkPairShape,
} from '../operators/sampleRegions.js';
import { ChunkCache } from '../storage/chunkCache.js';
import { defaultSketchCapacity } from '../core/quantiles.js';
import type { ChunkedArrayReader } from '../storage/chunked.js';
import type { MaskedPatch } from '../operators/maskN2V.js';
import { batchPatches } from '../operators/batchPatches.js';
import { trainSteps, type BatchLossFn, type MaskedLossFn, type StepResult } from '../operators/trainSteps.js';
import { stepsOnDemand } from './stepSource.js';
import { readImage } from '../storage/index.js';
import { VERSION } from '../core/version.js';

export interface NamedVolume {
  volume: Volume;
  name: string;
  /** n2n / care: the paired target image (second noisy shot, or clean), same shape as `volume`. */
  target?: Volume;
  /** Its file name, for messages. */
  targetName?: string;
}

/** A chunked array to train from without reading it whole (Zarr, TIFF stack, frame folder, S3). */
export interface NamedSource {
  reader: ChunkedArrayReader;
  name: string;
  /**
   * n2n / care: the paired target array (second noisy acquisition, or clean), exactly the shape of
   * `reader` (chunk shapes may differ). Or give `targetSources` and let them pair by name.
   */
  target?: ChunkedArrayReader;
  /** Its name (path or URL), for messages and the manifest. */
  targetName?: string;
}

/** Settings of streaming training (with `sources`); every one has a default. */
export interface StreamingTrainSettings {
  /**
   * Memory for the data side of training (chunk cache, batch queue, validation patches, statistics
   * sketch); what streamingTrainBufferBytes does not claim goes to the cache. The network's own
   * tensors (weights, optimiser state, activations) come on top: they depend on the model, not the data.
   */
  maxMemoryBytes?: number;
  /** Bytes of decoded chunks the shared cache may hold; default from maxMemoryBytes, else max(256 MiB, one step's regions). */
  cacheBytes?: number;
  /** Patches cut from each region (more: fewer chunk reads per patch, less variety per batch); default min(batch, 8). */
  patchesPerRegion?: number;
  /** Region size in chunks per axis; default defaultRegionChunks (two patches per axis, shrunk for big or thin chunks). */
  regionChunks?: number[];
  /** Chunk reads in flight at once; default 4. */
  readConcurrency?: number;
  /** Skip patches whose mean (or percentile) is below a raw intensity threshold. */
  background?: BackgroundFilter;
  /** Values sampled (as whole chunks) for the normalisation statistics; default 2^24. */
  normalisationSampleValues?: number;
  /** Called for every region fetched (training and validation), e.g. to count chunk reads. */
  onRegion?: (event: RegionEvent) => void;
}

export interface TrainOptions {
  /** Image files (already expanded), or give `volumes` directly, or chunked `sources` (streaming). */
  inputs?: string[];
  volumes?: NamedVolume[];
  /**
   * Streaming training: patches come from random chunk-aligned regions read through a byte-bounded
   * chunk cache, statistics from a sample of chunks; nothing holds a whole volume. Exclusive with
   * `inputs` / `volumes`.
   */
  sources?: NamedSource[];
  /**
   * n2n / care with `sources`: the target arrays, paired with `sources` by sorted name exactly as
   * `targets` pair with `inputs` (same count, same shapes); or set each source's `target` instead.
   */
  targetSources?: NamedSource[];
  streaming?: StreamingTrainSettings;
  /**
   * Batches the patch producer may run ahead of the model (explicit backpressure); default 2.
   * Memory held by the queue: (aheadBatches + 1) batches of inputs, targets and masks.
   */
  aheadBatches?: number;
  /** Called when a batch is ready for the model, before it is trained on (progress, tests). */
  onBatchReady?: (step: number) => void;
  /** Model folder to create. */
  out: string;
  method?: MethodName;
  /**
   * n2n / care: target image files (second noisy shots, or clean images), paired with `inputs` by
   * sorted file name (same count, same shapes). With `volumes`, set each one's `target` instead.
   */
  targets?: string[];
  /** structn2v: `horizontal:N`, `vertical:N`, `depth:N` or a mask file (models/structMask.ts), or an element. */
  structMask?: string | StructuringElement;
  /** noise2self / noise2info: side k of the grid of masking phases (default 4). */
  grid?: number;
  steps?: number;
  batchSize?: number;
  /** YX or ZYX in pixels/voxels; default 64x64 (2D) or 32x64x64 (3D). */
  patchShape?: number[];
  seed?: number;
  learningRate?: number;
  maskFraction?: number;
  strategy?: ReplacementStrategy;
  /** Half-width in pixels of the window a masked pixel's replacement comes from (default 2: a 5x5 window; --mask-radius). */
  maskRadius?: number;
  loss?: 'mse' | 'mae';
  /**
   * Train a Gaussian prior (mean and variance of the clean value, Laine et al.) by the likelihood of
   * the noisy value under this noise model, instead of a point estimate; denoise then gives the
   * posterior mean (models/bayes.ts).
   */
  prior?: NoiseSpec | 'learned' | 'nlf';
  /**
   * The Gaussian mixture noise model (noise/gmm.ts) behind a --prior file, for the methods whose loss
   * is the noise likelihood (Method.likelihood: pn2v, divnoising), which use it whole; `prior` then
   * holds its Poisson-Gaussian summary. Other methods use the summary only.
   */
  noiseModel?: GmmNoiseModel;
  /**
   * Fit each training image's noise-level function in worker threads while training runs and store
   * them in the model (default true for in-memory images; streamed sources are not fitted).
   */
  noiseFits?: boolean;
  /** Network shape overrides; which apply depends on the method's network (U-Net, laine19, D-BSN). */
  network?: NetworkOverrides;
  /**
   * Size of the default laine19 / D-BSN network: 'paper' (the published one) or 'small' (one that
   * trains at a useful pace on a CPU); default 'paper' on tensorflow-gpu, else 'small'.
   */
  networkSize?: 'paper' | 'small';
  normalisation?: 'meanstd' | 'percentile';
  augment?: boolean;
  /** Fraction of the data held out for validation (images, or a slab of a single image). */
  valFraction?: number;
  valPatches?: number;
  validateEvery?: number;
  /** Validations without improvement before the learning rate is halved. */
  patience?: number;
  resume?: boolean;
  overwrite?: boolean;
  backend?: { name: string; threads: number };
  /** Interrupt: the run stops after the current step with a checkpoint, resumable with `resume`. */
  signal?: AbortSignal;
  onEvent?: (event: TrainEvent) => void;
  command?: string[];
}

export type { NetworkOverrides };
export { minBatchSizeForBatchNorm };

export type TrainEvent =
  | {
      type: 'normalisation';
      mode: 'meanstd' | 'percentile';
      offset: number;
      scale: number;
      chunksRead: number;
      chunksTotal: number;
      valuesSeen: number;
      rankErrorBound: number;
    }
  | {
      type: 'start';
      steps: number;
      firstStep: number;
      dims: 2 | 3;
      /** The training method and a one-line description of its network (models/network.ts describeNetwork). */
      method: MethodName;
      network: string;
      patchShape: number[];
      batchSize: number;
      trainVolumes: number;
      valVolumes: number;
      resumed: boolean;
    }
  | { type: 'step'; step: number; steps: number; loss: number; learningRate: number; stepsPerSecond: number; lastValLoss: number | null }
  | { type: 'validation'; step: number; valLoss: number; best: boolean; learningRate: number }
  | { type: 'checkpoint'; step: number }
  | { type: 'warning'; message: string }
  | MethodEvent
  | { type: 'interrupted'; step: number }
  | { type: 'done'; steps: number; bestStep: number; bestValLoss: number | null; seconds: number };

const CHECKPOINT_DIR = 'checkpoint';

interface CheckpointState {
  stepsDone: number;
  learningRate: number;
  bestValLoss: number | null;
  bestStep: number;
  plateauWait: number;
  history: TrainingRecord[];
  wallSeconds: number;
  optimizerWeights: tf.io.WeightsManifestEntry[];
  /** Learned prior: log sigma (normalised units). */
  learnedLogSigma?: number;
  bestLearnedLogSigma?: number;
}

/** Trains a model and writes its folder. Returns the final manifest. */
export async function trainModel(opts: TrainOptions): Promise<ModelManifest> {
  const methodName: MethodName = opts.method ?? defaultMethodName;
  const method: Method = getMethod(methodName);
  if (opts.sources && (opts.inputs?.length || opts.volumes)) throw new UsageError('train takes either chunked sources or images, not both');
  validateOptions(method, opts);
  const named = opts.sources ? [] : (opts.volumes ?? (await readInputs(opts.inputs ?? [])));
  if (named.length === 0 && !opts.sources?.length) throw new UsageError('train needs at least one input image');
  // Streamed pairs: the same sorted-name rule as files; the caller's source objects are not changed.
  const sources = opts.sources && opts.targetSources ? pairSources(opts.sources, opts.targetSources) : opts.sources;
  const dims = sources ? inferSourceDims(sources) : inferDims(named);
  if (opts.targets) await attachTargets(named, opts.targets);
  if (method.targets !== undefined) {
    const missing = [...named, ...(sources ?? [])].find((n) => !n.target);
    if (missing) throw new UsageError(`--method ${methodName} needs a target image for every input (--targets); ${missing.name} has none`);
  }
  const givenPrior = typeof opts.prior === 'object' ? opts.prior : undefined;
  if (givenPrior) validateNoiseSpec(givenPrior, 'train --prior');
  // D-BSN always predicts (mean, variance) and needs a noise model: the images' noise-level fits unless one is given.
  const priorMode: PriorSource | null = opts.prior === undefined ? (method.defaultPrior ?? null) : typeof opts.prior === 'string' ? opts.prior : 'given';
  if (priorMode === 'nlf' && (sources || opts.noiseFits === false)) {
    throw new UsageError(
      `${method.defaultPrior === 'nlf' && opts.prior === undefined ? `--method ${methodName} uses the noise-level fits of the training images by default, which` : '--prior nlf'} needs in-memory training images (streamed sources are not fitted): give the noise with --prior gaussian:S, poisson-gaussian:A,B or a noise-model file`,
    );
  }
  const structMask = method.patchSettings?.(opts, dims).structMask;
  const grid = opts.grid ?? defaultGridSide;
  const batchSize = opts.batchSize ?? (dims === 2 ? 16 : 4);
  const size = opts.networkSize ?? ((opts.backend?.name ?? '') === 'tensorflow-gpu' ? 'paper' : 'small');
  let network = method.network({ dims, size, overrides: opts.network ?? {}, batchSize, twoChannels: priorMode !== null && !method.likelihood });
  const geometry = networkGeometry(network);
  const patchShape = (opts.patchShape ?? (dims === 2 ? [64, 64] : [32, 64, 64])) as number[];
  validatePatchShape(patchShape, dims, geometry.sizeMultiple);
  for (const { volume, name } of named) {
    volume.shape.forEach((s, axis) => {
      if (s < patchShape[axis]) {
        throw new InputError(name, `image is ${volume.shape.join('x')}, smaller than the training patch ${patchShape.join('x')}; use a smaller --patch`);
      }
    });
  }
  // Also checks that each streamed target has its input's shape (InputError naming the target).
  for (const source of sources ?? []) sourceBounds(source, patchShape);
  const steps = opts.steps ?? 1000;
  const seed = opts.seed ?? 1;
  const lossKind = opts.loss ?? 'mse';
  const masking: MaskOptions = {
    fraction: opts.maskFraction ?? defaultMaskOptions.fraction,
    strategy: opts.strategy ?? method.defaultStrategy ?? defaultMaskOptions.strategy,
    radius: opts.maskRadius ?? defaultMaskOptions.radius,
  };
  if (!(masking.fraction > 0 && masking.fraction < 0.5)) throw new UsageError(`--mask-fraction must be in (0, 0.5), got ${masking.fraction}`);
  if (!(Number.isInteger(masking.radius) && masking.radius >= 1)) throw new UsageError(`--mask-radius must be an integer >= 1, got ${masking.radius}`);
  const preparation: PatchPreparation = { method, masking, structMask, grid, seed };
  const aheadBatches = opts.aheadBatches ?? 2;
  if (!(Number.isInteger(aheadBatches) && aheadBatches >= 1)) throw new UsageError(`aheadBatches must be a positive integer, got ${aheadBatches}`);
  const baseLearningRate = opts.learningRate ?? 4e-4;
  const validateEvery = opts.validateEvery ?? Math.max(10, Math.round(steps / 20));
  const patience = opts.patience ?? 5;
  const rng = new Rng(seed);
  const valFraction = opts.valFraction ?? 0.1;
  const valPatches = opts.valPatches ?? Math.max(2 * batchSize, 32);

  // Resume or start fresh (checked before any statistics are read: on a remote volume that takes a while).
  const checkpointDir = path.join(opts.out, CHECKPOINT_DIR);
  const existing = await inspectOutput(opts.out);
  if (existing === 'checkpoint' && !opts.resume) {
    throw new OutputError(opts.out, 'holds an interrupted training run: pass --resume to continue it, or choose another --out');
  }
  if (existing === 'finished' && !opts.overwrite) {
    throw new OutputError(opts.out, 'already holds a trained model: choose another --out, or pass --overwrite');
  }
  if (existing === 'other') throw new OutputError(opts.out, 'exists and is not a blindspot model folder: choose another --out');

  let data: TrainingData;
  if (sources) {
    data = await prepareStreamingData(sources, {
      patchShape,
      batchSize,
      seed,
      valFraction,
      valPatches,
      preparation,
      mode: opts.normalisation ?? 'meanstd',
      aheadBatches,
      settings: opts.streaming ?? {},
      onEvent: opts.onEvent,
    });
  } else {
    const { train, validation } = splitForValidation(named, patchShape, valFraction);
    const normalisation: Normalisation = computeNormalisation(
      train.map((t) => t.volume),
      opts.normalisation ?? 'meanstd',
      { rng: rng.fork() },
    );
    data = {
      trainNames: train.map((t) => t.name),
      validationNames: validation.map((v) => v.name),
      normalisation,
      patches: samplePatches({ volumes: train, patchShape: patchShape as unknown as Shape, patchesPerStep: batchSize, normalisation, seed }),
      valBatches: makeValidationBatches(validation, patchShape, batchSize, valPatches, normalisation, preparation, seed),
    };
  }
  const { normalisation, valBatches } = data;
  // Started now, awaited at the end: the fits run at low priority beside training.
  const noiseFits =
    opts.noiseFits === false || sources
      ? null
      : fitNoiseInWorkers(named.map(({ volume, name }) => ({ name, data: volume.data, shape: volume.shape, sampleType: volume.sampleType }))).catch(
          (err: Error) => {
            opts.onEvent?.({ type: 'warning', message: `noise-level fits failed, the model is saved without them: ${err.message}` });
            return null;
          },
        );
  // The noise model of 2-channel models: given, learned jointly (a global sigma), or the images' fits (awaited now).
  let priorNoise: NoiseSpec | undefined = givenPrior;
  if (priorMode === 'nlf') {
    const fits = await noiseFits;
    if (!fits || fits.length === 0) throw new UsageError(`the training images' noise-level fits failed, so ${methodName} has no noise model: give one with --prior gaussian:S or poisson-gaussian:A,B`);
    priorNoise = pooledNoiseSpec(fits);
  }

  let model: tfl.LayersModel;
  const optimizer = createAdam(baseLearningRate);
  let state: CheckpointState = {
    stepsDone: 0,
    learningRate: baseLearningRate,
    bestValLoss: null,
    bestStep: 0,
    plateauWait: 0,
    history: [],
    wallSeconds: 0,
    optimizerWeights: [],
  };
  const resumed = existing === 'checkpoint' && !!opts.resume;
  let savedState: Record<string, unknown> | undefined;
  if (resumed) {
    const restored = await readCheckpoint(checkpointDir, optimizer, state);
    model = restored.model;
    state = restored.state;
    savedState = restored.state as unknown as Record<string, unknown>;
    // A checkpoint from before batch norm's default followed the batch size has it whatever the size:
    // the manifest must describe the network that is actually trained.
    if (network.kind === undefined || network.kind === 'unet') network = { ...network, batchNorm: model.layers.some((l) => l.getClassName().includes('BatchNorm')) };
  } else {
    model = buildNetwork(network, seed);
  }
  setLearningRate(optimizer, state.learningRate);
  // A variable created after the restore: Adam matches its moments by position, the network's weights first.
  // A fresh run (or a checkpoint without it) starts sigma at the validation patches' noise level; the likelihood refines it.
  const learnedLogSigma =
    priorMode === 'learned'
      ? tf.variable(tf.scalar(state.learnedLogSigma ?? Math.log(initialLearnedSigma(valBatches))), true, `learned_noise_log_sigma_${seed}_${Date.now()}`)
      : null;
  const noiseVariance =
    learnedLogSigma !== null ? learnedNoiseVariance(learnedLogSigma) : priorNoise !== undefined ? normalisedNoiseVariance(priorNoise, normalisation) : undefined;
  const maskedLossFn: MaskedLossFn =
    noiseVariance !== undefined ? gaussianPriorLoss(noiseVariance) : (prediction, target, mask) => maskedLoss(prediction, target, mask, lossKind);
  // Likelihood methods weigh clean-signal candidates by the noise model itself (the GMM whole, when given).
  const likelihoodNoise: LikelihoodNoise | undefined =
    method.likelihood && priorNoise !== undefined ? { spec: priorNoise, ...(opts.noiseModel ? { gmm: opts.noiseModel } : {}) } : undefined;
  const noiseLikelihood = likelihoodNoise ? normalisedNoiseLikelihood(likelihoodNoise, normalisation) : undefined;
  // The method's part of the run: its batch loss, validation hook, manifest and checkpoint state.
  const methodRun = method.training({ seed, grid, maskedLoss: maskedLossFn, noiseVariance, noiseLikelihood, saved: savedState });
  const batchLoss: BatchLossFn = methodRun.batchLoss;
  const priorRecord = (): ModelManifest['prior'] => {
    if (learnedLogSigma !== null) {
      // Normalised units -> input units: sigma scales with the normalisation.
      // The sigma trained together with the weights the folder holds (those of the best validation).
      const logSigma = state.bestLearnedLogSigma ?? learnedLogSigma.dataSync()[0];
      return { noise: { kind: 'gaussian', sigma: Math.exp(logSigma) * normalisation.scale }, source: 'learned' };
    }
    return priorNoise !== undefined ? { noise: priorNoise, source: priorMode ?? 'given' } : undefined;
  };
  const methodSettings = (): MethodSettings | undefined => {
    const settings: MethodSettings = { ...method.settings?.(opts, preparation), ...methodRun.settings?.() };
    if (method.targets !== undefined) settings.targets = (sources ?? named).map((n) => n.targetName ?? `${n.name} (target)`);
    return Object.keys(settings).length > 0 ? settings : undefined;
  };

  opts.onEvent?.({
    type: 'start',
    steps,
    firstStep: state.stepsDone,
    dims,
    method: methodName,
    network: describeNetwork(network),
    patchShape,
    batchSize,
    trainVolumes: data.trainNames.length,
    valVolumes: data.validationNames.length,
    resumed,
  });

  const manifestFor = (finished: boolean): ModelManifest => ({
    format: 'blindspot-model',
    formatVersion: 1,
    method: methodName,
    network,
    normalisation,
    patchShape,
    ...(method.masking === 'stratified' ? { masking } : {}),
    loss: method.ownLoss?.name ?? (priorMode !== null ? 'prior-nll' : lossKind),
    ...(priorMode !== null ? { prior: priorRecord() } : {}),
    ...(likelihoodNoise ? { noiseModel: likelihoodNoise } : {}),
    ...(methodSettings() ? { methodSettings: methodSettings() } : {}),
    training: {
      steps,
      stepsDone: state.stepsDone,
      batchSize,
      seed,
      learningRate: baseLearningRate,
      backend: opts.backend?.name ?? tf.getBackend(),
      threads: opts.backend?.threads ?? 1,
      inputs: data.trainNames,
      validationInputs: data.validationNames,
      bestStep: state.bestStep,
      bestValLoss: state.bestValLoss,
      wallSeconds: state.wallSeconds,
      finished,
    },
    history: state.history,
    createdBy: { name: 'blindspot', version: VERSION, command: opts.command ?? process.argv.slice(1) },
  });

  const segmentStart = performance.now();
  const wallAtStart = state.wallSeconds;
  const stepDone = new Subject<void>();
  let interrupted = false;
  let lastValLoss: number | null = state.history.findLast((h) => h.valLoss !== undefined)?.valLoss ?? null;
  let rateWindow: { t: number; step: number } = { t: performance.now(), step: state.stepsDone };
  let stepsPerSecond = 0;

  const afterStep = async (result: StepResult): Promise<void> => {
    state.stepsDone = result.step + 1;
    state.wallSeconds = wallAtStart + (performance.now() - segmentStart) / 1000;
    const now = performance.now();
    if (now - rateWindow.t > 2000) {
      stepsPerSecond = (state.stepsDone - rateWindow.step) / ((now - rateWindow.t) / 1000);
      rateWindow = { t: now, step: state.stepsDone };
    } else if (stepsPerSecond === 0) {
      stepsPerSecond = (state.stepsDone - rateWindow.step) / Math.max(1e-3, (now - rateWindow.t) / 1000);
    }
    if (!Number.isFinite(result.loss)) {
      throw new Error(`training diverged at step ${result.step} (loss ${result.loss}); try a lower --learning-rate`);
    }
    const record: TrainingRecord = { step: state.stepsDone, loss: result.loss, learningRate: state.learningRate, seconds: state.wallSeconds };
    const isValidationStep = state.stepsDone % validateEvery === 0 || state.stepsDone === steps;
    if (learnedLogSigma !== null) state.learnedLogSigma = learnedLogSigma.dataSync()[0];
    if (isValidationStep) {
      const valLoss = evaluateValidation(model, valBatches, batchLoss);
      record.valLoss = valLoss;
      const hook = methodRun.onValidation?.({ model, batches: valBatches, step: state.stepsDone });
      if (hook?.record) Object.assign(record, hook.record);
      for (const event of hook?.events ?? []) opts.onEvent?.(event);
      lastValLoss = valLoss;
      const improved = state.bestValLoss === null || valLoss < state.bestValLoss;
      if (improved) {
        state.bestValLoss = valLoss;
        state.bestStep = state.stepsDone;
        if (state.learnedLogSigma !== undefined) state.bestLearnedLogSigma = state.learnedLogSigma;
        state.plateauWait = 0;
        state.history.push(record);
        await saveModelFolder(opts.out, model, manifestFor(false));
      } else {
        state.history.push(record);
        state.plateauWait += 1;
        if (state.plateauWait >= patience) {
          state.learningRate = Math.max(state.learningRate * 0.5, 1e-6);
          setLearningRate(optimizer, state.learningRate);
          state.plateauWait = 0;
        }
      }
      opts.onEvent?.({ type: 'validation', step: state.stepsDone, valLoss, best: improved, learningRate: state.learningRate });
      if (state.stepsDone < steps) {
        await writeCheckpoint(checkpointDir, model, optimizer, { ...state, ...methodRun.checkpointState?.() });
        opts.onEvent?.({ type: 'checkpoint', step: state.stepsDone });
      }
    } else {
      state.history.push(record);
    }
    opts.onEvent?.({ type: 'step', step: state.stepsDone, steps, loss: result.loss, learningRate: state.learningRate, stepsPerSecond, lastValLoss });
    if (opts.signal?.aborted && state.stepsDone < steps) {
      if (!isValidationStep) await writeCheckpoint(checkpointDir, model, optimizer, { ...state, ...methodRun.checkpointState?.() });
      interrupted = true;
      opts.onEvent?.({ type: 'interrupted', step: state.stepsDone });
      stepDone.complete();
      return;
    }
    stepDone.next();
  };

  const run$ = stepsOnDemand(state.stepsDone, steps, aheadBatches, stepDone).pipe(
    data.patches,
    map((p) => augmentMethodPatch(p, opts.augment ?? true)),
    map((p): MaskedPatch => ({ step: p.step, shape: p.shape, ...preparePatch(p, preparation) })),
    batchPatches({ batchSize }),
    tap((batch) => opts.onBatchReady?.(batch.step)),
    trainSteps({
      model,
      optimizer,
      loss: { batch: batchLoss },
      extraVariables: () => (learnedLogSigma !== null ? [learnedLogSigma] : []),
      afterEach: async (r) => {
        if (!interrupted) await afterStep(r);
      },
    }),
    tap({ complete: () => stepDone.complete() }),
    defaultIfEmpty(null),
  );
  try {
    await lastValueFrom(run$);
  } finally {
    stepDone.complete();
  }

  if (interrupted) {
    model.dispose();
    optimizer.dispose();
    learnedLogSigma?.dispose();
    throw new TrainingInterrupted(opts.out, state.stepsDone);
  }
  // The best model is what the folder holds; record the finished run in its manifest.
  if (state.bestStep === 0) await saveModelFolder(opts.out, model, manifestFor(true));
  const noise = (await noiseFits) ?? undefined;
  let manifest: ModelManifest = { ...manifestFor(true), ...(noise ? { noise } : {}) };
  if (priorMode === null && method.afterTraining) {
    const best = (await loadModelFolder(opts.out)).model;
    const offset = method.afterTraining(best, valBatches);
    manifest = { ...manifest, outputOffsetRemoved: offset * normalisation.scale };
    await saveModelFolder(opts.out, best, manifest);
    best.dispose();
  } else {
    await writeFilesAtomically(opts.out, { [MANIFEST_JSON]: JSON.stringify(manifest, null, 2) + '\n' });
  }
  await fs.rm(checkpointDir, { recursive: true, force: true });
  opts.onEvent?.({ type: 'done', steps: state.stepsDone, bestStep: state.bestStep, bestValLoss: state.bestValLoss, seconds: state.wallSeconds });
  model.dispose();
  optimizer.dispose();
  learnedLogSigma?.dispose();
  return manifest;
}

export class TrainingInterrupted extends Error {
  constructor(
    readonly out: string,
    readonly step: number,
  ) {
    super(`training interrupted after step ${step}; continue it with the same command and --resume (model folder ${out})`);
    this.name = 'TrainingInterrupted';
  }
}

/** Checks the method's options (methods/options.ts) and how streamed targets are given, before anything is read. */
function validateOptions(method: Method, opts: TrainOptions): void {
  const streamedTargets = opts.targetSources !== undefined || (opts.sources ?? []).some((s) => s.target);
  validateMethodOptions(method, opts, { given: !!opts.targets || streamedTargets, optional: !!opts.volumes });
  if (opts.targetSources && !opts.sources) throw new UsageError('streamed targets (targetSources) pair with streamed sources; image inputs take image --targets');
  if (opts.targets && opts.sources) throw new UsageError('streamed sources pair with streamed targets (targetSources), not image files');
  if (opts.targetSources && opts.sources?.some((s) => s.target)) throw new UsageError('give the targets either as targetSources or on the sources, not both');
}

/** A method's patch -> (input, target, mask) (Method.preparePatch). */
function preparePatch(p: MethodPatch, prep: PatchPreparation): PreparedPatch {
  return prep.method.preparePatch(p, prep);
}

/**
 * The one pairing rule of n2n / care, for files and streamed sources alike: inputs and targets each
 * sorted by name (numeric-aware), the i-th of each a pair. Different counts: InputError naming the
 * first input or target left without a partner. Pairs come in sorted order.
 */
export function pairByName<I, T>(inputs: readonly I[], targets: readonly T[], inputName: (input: I) => string, targetName: (target: T) => string): Array<{ input: I; target: T }> {
  const byName = (a: string, b: string): number => a.localeCompare(b, undefined, { numeric: true });
  const sortedInputs = [...inputs].sort((a, b) => byName(inputName(a), inputName(b)));
  const sortedTargets = [...targets].sort((a, b) => byName(targetName(a), targetName(b)));
  if (sortedTargets.length !== sortedInputs.length) {
    const unpaired = sortedTargets.length > sortedInputs.length ? targetName(sortedTargets[sortedInputs.length]) : inputName(sortedInputs[sortedTargets.length]);
    throw new InputError(unpaired, `has no partner: ${sortedInputs.length} input(s) but ${sortedTargets.length} --targets; inputs and targets are paired by sorted name`);
  }
  return sortedInputs.map((input, i) => ({ input, target: sortedTargets[i] }));
}

/**
 * Reads the target files and pairs them with the inputs (pairByName): same count, same shapes, else
 * an error naming the file concerned.
 */
async function attachTargets(named: NamedVolume[], targetFiles: string[]): Promise<void> {
  for (const { input, target: file } of pairByName(named, targetFiles, (n) => n.name, (f) => f)) {
    const target = await readImage(file);
    checkPairShape(file, target.shape, input.name, input.volume.shape);
    input.target = target;
    input.targetName = file;
  }
}

/** Streamed sources with their targets attached (pairByName), in the sources' given order; shapes are checked by sourceBounds. */
function pairSources(sources: readonly NamedSource[], targets: readonly NamedSource[]): NamedSource[] {
  const partner = new Map(pairByName(sources, targets, (s) => s.name, (t) => t.name).map(({ input, target }) => [input, target]));
  return sources.map((s) => ({ ...s, target: partner.get(s)!.reader, targetName: partner.get(s)!.name }));
}

/** One Poisson-Gaussian noise model for all the training images: the mean of their fits' summaries. */
function pooledNoiseSpec(fits: readonly NlfRecord[]): NoiseSpec {
  const a = fits.reduce((sum, f) => sum + f.a, 0) / fits.length;
  const b = fits.reduce((sum, f) => sum + f.b, 0) / fits.length;
  // A slightly negative slope is fit noise on nearly signal-independent data.
  return { kind: 'poisson-gaussian', a: Math.max(0, a), b };
}

async function readInputs(files: string[]): Promise<NamedVolume[]> {
  const out: NamedVolume[] = [];
  for (const file of files) out.push({ volume: await readImage(file), name: file });
  return out;
}

function inferDims(named: NamedVolume[]): 2 | 3 {
  const dims = new Set(named.map((n) => n.volume.shape.length));
  if (dims.size > 1) {
    const first3 = named.find((n) => n.volume.shape.length === 3)!;
    throw new InputError(first3.name, 'is a 3D stack while other inputs are 2D images: train 2D and 3D models separately');
  }
  return named[0].volume.shape.length === 3 ? 3 : 2;
}

function validatePatchShape(patch: number[], dims: 2 | 3, multiple: number): void {
  if (patch.length !== dims) throw new UsageError(`--patch needs ${dims} sizes for ${dims}D data (got ${patch.join('x')})`);
  for (const s of patch) {
    if (!Number.isInteger(s) || s <= 0 || s % multiple !== 0) {
      throw new UsageError(`--patch sizes must be positive multiples of ${multiple} (2^depth) for this network, got ${patch.join('x')}`);
    }
  }
}

/**
 * Held-out data for validation and best-model selection: whole images when there are several,
 * else a slab at the end of the slowest axis that fits patches (so no validation pixel is trained on).
 */
export function splitForValidation(named: NamedVolume[], patchShape: number[], fraction: number): { train: NamedVolume[]; validation: NamedVolume[] } {
  if (fraction <= 0) return { train: named, validation: named };
  if (named.length >= 2) {
    const nVal = Math.max(1, Math.round(named.length * fraction));
    return { train: named.slice(0, named.length - nVal), validation: named.slice(named.length - nVal) };
  }
  const { volume, name, target, targetName } = named[0];
  const axis = 0;
  const size = volume.shape[axis];
  const valSize = Math.max(patchShape[axis], Math.round(size * fraction));
  if (size - valSize < patchShape[axis]) {
    // Too small to split: validate on the training image (still tracks convergence, not generalisation).
    return { train: named, validation: named };
  }
  const paired = (start: number, end: number): Pick<NamedVolume, 'target' | 'targetName'> => (target ? { target: sliceAxis0(target, start, end), targetName } : {});
  return {
    train: [{ volume: sliceAxis0(volume, 0, size - valSize), name, ...paired(0, size - valSize) }],
    validation: [{ volume: sliceAxis0(volume, size - valSize, size), name: `${name} (validation slab)`, ...paired(size - valSize, size) }],
  };
}

function sliceAxis0(volume: Volume, start: number, end: number): Volume {
  const plane = volume.data.length / volume.shape[0];
  const shape = [end - start, ...volume.shape.slice(1)] as unknown as Shape;
  return { data: volume.data.subarray(start * plane, end * plane), shape, sampleType: volume.sampleType };
}

/** Where training patches and validation batches come from: in-memory volumes or streamed sources. */
interface TrainingData {
  trainNames: string[];
  validationNames: string[];
  normalisation: Normalisation;
  /** Step index -> that step's normalised patches, in index order. */
  patches: OperatorFunction<number, PatchSample>;
  valBatches: ValidationBatch[];
  /** Streaming only: the chunk cache and region counters (for progress and tests). */
  cache?: ChunkCache;
  regionStats?: RegionSamplingStats;
}

function inferSourceDims(sources: NamedSource[]): 2 | 3 {
  for (const s of sources) {
    const rank = s.reader.info.shape.length;
    if (rank !== 2 && rank !== 3) {
      throw new InputError(s.name, `has ${rank} axes [${s.reader.info.shape.join(', ')}]; training needs a YX or ZYX array (choose a channel and time point)`);
    }
  }
  const dims = new Set(sources.map((s) => s.reader.info.shape.length));
  if (dims.size > 1) {
    const first3 = sources.find((s) => s.reader.info.shape.length === 3)!;
    throw new InputError(first3.name, 'is a 3D stack while other inputs are 2D images: train 2D and 3D models separately');
  }
  return sources[0].reader.info.shape.length === 3 ? 3 : 2;
}

/**
 * Held-out data for streamed sources, the same policy as splitForValidation but chunk-aligned:
 * whole sources when there are several, else a slab of whole chunks at the end of axis 0 (at least
 * one patch thick, about `fraction` of the chunks), so no chunk serves both training and
 * validation. Too small to split: validation patches come from the training data.
 */
export function splitSourcesForValidation(
  sources: NamedSource[],
  patchShape: number[],
  fraction: number,
): { train: ChunkedSource[]; validation: ChunkedSource[] } {
  if (fraction <= 0) return { train: sources, validation: sources };
  if (sources.length >= 2) {
    const nVal = Math.max(1, Math.round(sources.length * fraction));
    return { train: sources.slice(0, sources.length - nVal), validation: sources.slice(sources.length - nVal) };
  }
  const { reader, name, target, targetName } = sources[0];
  const { shape, chunks } = reader.info;
  const chunkRows = Math.ceil(shape[0] / chunks[0]);
  const valRows = Math.max(Math.ceil(patchShape[0] / chunks[0]), Math.round(chunkRows * fraction));
  const slabStart = (chunkRows - valRows) * chunks[0];
  // The slab must hold a patch too (the last chunk row may be short).
  if (slabStart < patchShape[0] || shape[0] - slabStart < patchShape[0]) return { train: sources, validation: sources };
  const whole = { start: shape.map(() => 0), end: [...shape] };
  // A pair's target is split by the same bounds (same shape): its held-out voxels are the input's.
  const pairedPart = (suffix: string): Pick<ChunkedSource, 'target' | 'targetName'> =>
    target ? { target, targetName: `${targetName ?? `${name} (target)`}${suffix}` } : {};
  return {
    train: [{ reader, name, ...pairedPart(''), bounds: { start: whole.start, end: [slabStart, ...whole.end.slice(1)] } }],
    validation: [{ reader, name: `${name} (validation slab)`, ...pairedPart(' (validation slab)'), bounds: { start: [slabStart, ...whole.start.slice(1)], end: whole.end } }],
  };
}

async function prepareStreamingData(
  sources: NamedSource[],
  opts: {
    patchShape: number[];
    batchSize: number;
    seed: number;
    valFraction: number;
    valPatches: number;
    preparation: PatchPreparation;
    mode: 'meanstd' | 'percentile';
    aheadBatches: number;
    settings: StreamingTrainSettings;
    onEvent?: (event: TrainEvent) => void;
  },
): Promise<TrainingData> {
  const { patchShape, batchSize, seed, settings } = opts;
  const { train, validation } = splitSourcesForValidation(sources, patchShape, opts.valFraction);
  const patchesPerRegion = Math.max(1, Math.min(batchSize, settings.patchesPerRegion ?? 8));
  const regionsPerStep = Math.ceil(batchSize / patchesPerRegion);
  // One step's regions must fit in the cache together, or patches re-read chunks the step just fetched.
  // Paired sources: regionBytes counts the target chunks under each region too (both arrays share the
  // one cache), so the bound below holds for input + target, never more than one step's regions of each.
  const stepBytes = regionsPerStep * Math.max(...[...train, ...validation].map((s) => regionBytes(s, patchShape, settings.regionChunks)));
  const buffers = streamingTrainBufferBytes({
    patchShape,
    batchSize,
    aheadBatches: opts.aheadBatches,
    valPatches: opts.valPatches,
    chunkShape: sources[0].reader.info.chunks,
    readConcurrency: settings.readConcurrency,
    paired: sources.some((s) => s.target),
  });
  const cacheBytes = settings.cacheBytes ?? (settings.maxMemoryBytes !== undefined ? settings.maxMemoryBytes - buffers : Math.max(256 * 2 ** 20, stepBytes));
  if (cacheBytes < stepBytes) {
    const budget = settings.maxMemoryBytes !== undefined && settings.cacheBytes === undefined ? ` (${mib(settings.maxMemoryBytes)} memory less ${mib(buffers)} of batches and statistics)` : '';
    throw new UsageError(
      `the chunk cache${budget}, ${mib(cacheBytes)}, cannot hold the chunks of one training step (${regionsPerStep} region(s), ${mib(stepBytes)}): ` +
        'allow more memory, or use smaller regions or more patches per region',
    );
  }
  const cache = new ChunkCache(cacheBytes);
  const sampled: SampledNormalisation = await sampleNormalisation(train, opts.mode, {
    seed: mixSeed(seed, 0x6e6f, 0),
    sampleValues: settings.normalisationSampleValues,
    readConcurrency: settings.readConcurrency,
  });
  const { normalisation } = sampled;
  opts.onEvent?.({
    type: 'normalisation',
    mode: normalisation.mode,
    offset: normalisation.offset,
    scale: normalisation.scale,
    chunksRead: sampled.chunksRead,
    chunksTotal: sampled.chunksTotal,
    valuesSeen: sampled.valuesSeen,
    rankErrorBound: sampled.rankErrorBound,
  });
  const common = {
    cache,
    patchShape: patchShape as unknown as Shape,
    patchesPerRegion,
    regionChunks: settings.regionChunks,
    readConcurrency: settings.readConcurrency,
    normalisation,
    background: settings.background,
    onRegion: settings.onRegion,
  };
  // Validation: a fixed seeded set drawn once (the same every validation, so losses compare).
  const validationSampler = regionStepSampler({ ...common, sources: validation, patchesPerStep: batchSize, seed: seed ^ 0x5a5a5a5a });
  const per = patchShape.reduce((a, b) => a * b, 1);
  const valBatches: ValidationBatch[] = [];
  for (let b = 0; b * batchSize < opts.valPatches; b++) {
    const patches = (await validationSampler(b)).slice(0, Math.min(batchSize, opts.valPatches - b * batchSize));
    const n = patches.length;
    const batch: ValidationBatch = { shape: [n, ...patchShape, 1], inputs: new Float32Array(per * n), targets: new Float32Array(per * n), masks: new Float32Array(per * n) };
    patches.forEach((p, i) => {
      const m = preparePatch({ ...p, step: b * batchSize + i }, opts.preparation);
      batch.inputs.set(m.input, i * per);
      batch.targets.set(m.target, i * per);
      batch.masks.set(m.mask, i * per);
    });
    valBatches.push(batch);
  }
  const regionStats: RegionSamplingStats = { regions: 0, patchesDrawn: 0, backgroundSkipped: 0 };
  return {
    trainNames: train.map((t) => t.name),
    validationNames: validation.map((v) => v.name),
    normalisation,
    patches: sampleRegions({ ...common, sources: train, patchesPerStep: batchSize, seed, stats: regionStats }),
    valBatches,
    cache,
    regionStats,
  };
}

/**
 * Bytes the streaming data side holds besides the chunk cache: the batch queue ((aheadBatches + 1)
 * batches, each about six float32 copies of its patches between sampling, augmentation, masking and
 * packing; eight for pairs, whose targets are cut, normalised and augmented too but not masked), the
 * fixed validation set (input, target, mask), the quantile sketch and the chunks of one window of
 * normalisation reads (raw and cropped; statistics come from the inputs only). A pair's target
 * chunks are in the cache, whose bound (regionBytes) counts them.
 */
export function streamingTrainBufferBytes(opts: {
  patchShape: readonly number[];
  batchSize: number;
  aheadBatches?: number;
  valPatches: number;
  chunkShape: readonly number[];
  readConcurrency?: number;
  /** n2n / care sources (with targets). */
  paired?: boolean;
}): number {
  const patchBytes = 4 * opts.patchShape.reduce((a, b) => a * b, 1);
  const copiesPerPatch = opts.paired ? 8 : 6;
  const queue = ((opts.aheadBatches ?? 2) + 1) * copiesPerPatch * opts.batchSize * patchBytes;
  const validation = 3 * opts.valPatches * patchBytes;
  const statistics = 4 * defaultSketchCapacity + 2 * (opts.readConcurrency ?? 4) * 4 * opts.chunkShape.reduce((a, b) => a * b, 1);
  return queue + validation + statistics;
}

function mib(bytes: number): string {
  return `${(bytes / 2 ** 20).toFixed(1)} MiB`;
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
function initialLearnedSigma(valBatches: readonly ValidationBatch[]): number {
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

/** A fixed, seeded set of masked validation patches: the same every validation, so losses compare. */
function makeValidationBatches(
  validation: NamedVolume[],
  patchShape: number[],
  batchSize: number,
  count: number,
  normalisation: Normalisation,
  preparation: PatchPreparation,
  seed: number,
): ValidationBatch[] {
  const batches: ValidationBatch[] = [];
  const per = patchShape.reduce((a, b) => a * b, 1);
  for (let b = 0; b * batchSize < count; b++) {
    const n = Math.min(batchSize, count - b * batchSize);
    const inputs = new Float32Array(per * n);
    const targets = new Float32Array(per * n);
    const masks = new Float32Array(per * n);
    for (let i = 0; i < n; i++) {
      const rng = new Rng(mixSeed(seed ^ 0x5a5a5a5a, b, i));
      const { volume, name, target } = validation[rng.int(validation.length)];
      const shape = patchShape as unknown as Shape;
      let patch: Float32Array;
      let targetPatch: Float32Array | undefined;
      if (target) {
        const pair = randomPatchPair(volume, target, shape, rng, name);
        patch = normalise(pair.input, normalisation);
        targetPatch = normalise(pair.target, normalisation);
      } else {
        patch = normalise(randomPatch(volume, shape, rng, name), normalisation);
      }
      // Validation patches take every grid phase in turn (step = their index).
      const m = preparePatch({ step: b * batchSize + i, shape, data: patch, target: targetPatch, rng }, preparation);
      inputs.set(m.input, i * per);
      targets.set(m.target, i * per);
      masks.set(m.mask, i * per);
    }
    batches.push({ shape: [n, ...patchShape, 1], inputs, targets, masks });
  }
  return batches;
}

function evaluateValidation(model: tfl.LayersModel, batches: ValidationBatch[], lossFn: BatchLossFn): number {
  let sum = 0;
  let weight = 0;
  const apply = (x: tf.Tensor): tf.Tensor => model.apply(x, { training: false }) as tf.Tensor;
  for (const b of batches) {
    const value = tf.tidy(() => lossFn(apply, tf.tensor(b.inputs, b.shape), tf.tensor(b.targets, b.shape), tf.tensor(b.masks, b.shape)).dataSync()[0]);
    sum += value * b.shape[0];
    weight += b.shape[0];
  }
  return sum / weight;
}

function setLearningRate(optimizer: tf.Optimizer, lr: number): void {
  // Adam reads `learningRate` on every step; it is protected in the typings only.
  (optimizer as unknown as { learningRate: number }).learningRate = lr;
}

type OutputState = 'absent' | 'checkpoint' | 'finished' | 'other';

async function inspectOutput(out: string): Promise<OutputState> {
  let entries: string[];
  try {
    entries = await fs.readdir(out);
  } catch {
    return 'absent';
  }
  if (entries.includes(CHECKPOINT_DIR)) return 'checkpoint';
  if (entries.includes(MANIFEST_JSON)) return 'finished';
  if (entries.length === 0) return 'absent';
  return 'other';
}

async function writeCheckpoint(dir: string, model: tfl.LayersModel, optimizer: tf.Optimizer, state: CheckpointState): Promise<void> {
  const { modelJson, weights } = await modelToFiles(model);
  const named = await optimizer.getWeights();
  const encoded = await tf.io.encodeWeights(named);
  const optimizerData = new Uint8Array(tf.io.CompositeArrayBuffer.join(encoded.data));
  const fullState: CheckpointState = { ...state, optimizerWeights: encoded.specs };
  // state.json last: a checkpoint is only as new as its state file says, and every file is renamed into place.
  await writeFilesAtomically(dir, { [MODEL_JSON]: modelJson, [WEIGHTS_BIN]: weights, 'optimizer.bin': optimizerData });
  await writeFilesAtomically(dir, { 'state.json': JSON.stringify(fullState) });
}

async function readCheckpoint(dir: string, optimizer: tf.Optimizer, fresh: CheckpointState): Promise<{ model: tfl.LayersModel; state: CheckpointState }> {
  const stateFile = path.join(dir, 'state.json');
  let state: CheckpointState;
  try {
    state = { ...fresh, ...(JSON.parse(await fs.readFile(stateFile, 'utf8')) as CheckpointState) };
  } catch (err) {
    throw new InputError(stateFile, `cannot read the checkpoint (${(err as Error).message}); start a new run in another --out`);
  }
  const model = await modelFromFiles(
    await fs.readFile(path.join(dir, MODEL_JSON), 'utf8'),
    new Uint8Array(await fs.readFile(path.join(dir, WEIGHTS_BIN))),
    path.join(dir, MODEL_JSON),
  );
  const optimizerBytes = await fs.readFile(path.join(dir, 'optimizer.bin'));
  const buffer = optimizerBytes.buffer.slice(optimizerBytes.byteOffset, optimizerBytes.byteOffset + optimizerBytes.byteLength) as ArrayBuffer;
  const decoded = tf.io.decodeWeights(buffer, state.optimizerWeights);
  await optimizer.setWeights(state.optimizerWeights.map((s) => ({ name: s.name, tensor: decoded[s.name] })));
  return { model, state };
}
