/**
 * Noise2Void / N2V2 training: random patches -> augmentation -> stratified masking -> batches ->
 * optimiser steps, with validation, reduce-on-plateau, best-model selection, checkpoints and resume.
 * Patches come from in-memory volumes, or (with `sources`) stream from chunked arrays of any size:
 * random chunk-aligned regions through a byte-bounded chunk cache, normalisation statistics from a
 * seeded sample of chunks, the producer at most `aheadBatches` batches in front of the model.
 */
import { promises as fs } from 'node:fs';
import path from 'node:path';
import { type OperatorFunction, Subject, lastValueFrom, tap, defaultIfEmpty } from 'rxjs';
import * as tf from '@tensorflow/tfjs-core';
import type * as tfl from '@tensorflow/tfjs-layers';
import { InputError, OutputError, UsageError } from '../core/errors.js';
import { Rng } from '../core/rng.js';
import type { Shape, Volume } from '../core/volume.js';
import { buildUNet, defaultUNetConfig, unetGeometry, type UNetConfig } from '../models/unet.js';
import { computeNormalisation, normalise, type Normalisation } from '../models/normalise.js';
import { defaultMaskOptions, maskPatch, type MaskOptions, type ReplacementStrategy } from '../models/masking.js';
import { randomPatch } from '../models/patches.js';
import { maskedLoss } from '../models/losses.js';
import { fitNoiseInWorkers } from '../workers/noisePool.js';
import { gaussianPriorLoss, normalisedNoiseVariance, validateNoiseSpec, type NoiseSpec } from '../models/bayes.js';
import {
  MANIFEST_JSON,
  modelFromFiles,
  modelToFiles,
  saveModelFolder,
  writeFilesAtomically,
  MODEL_JSON,
  WEIGHTS_BIN,
  type MethodName,
  type ModelManifest,
  type TrainingRecord,
} from '../models/io.js';
import { samplePatches, mixSeed, type PatchSample } from '../operators/samplePatches.js';
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
} from '../operators/sampleRegions.js';
import { ChunkCache } from '../storage/chunkCache.js';
import { defaultSketchCapacity } from '../core/quantiles.js';
import type { ChunkedArrayReader } from '../storage/chunked.js';
import { augmentPatches } from '../operators/augmentPatches.js';
import { maskN2V } from '../operators/maskN2V.js';
import { batchPatches } from '../operators/batchPatches.js';
import { trainSteps, type MaskedLossFn, type StepResult } from '../operators/trainSteps.js';
import { stepsOnDemand } from './stepSource.js';
import { readImage } from '../storage/index.js';
import { VERSION } from '../core/version.js';

export interface NamedVolume {
  volume: Volume;
  name: string;
}

/** A chunked array to train from without reading it whole (Zarr, TIFF stack, frame folder, S3). */
export interface NamedSource {
  reader: ChunkedArrayReader;
  name: string;
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
  steps?: number;
  batchSize?: number;
  /** YX or ZYX in pixels/voxels; default 64x64 (2D) or 32x64x64 (3D). */
  patchShape?: number[];
  seed?: number;
  learningRate?: number;
  maskFraction?: number;
  strategy?: ReplacementStrategy;
  loss?: 'mse' | 'mae';
  /**
   * Train a Gaussian prior (mean and variance of the clean value, Laine et al.) by the likelihood of
   * the noisy value under this noise model, instead of a point estimate; denoise then gives the
   * posterior mean (models/bayes.ts).
   */
  prior?: NoiseSpec;
  /**
   * Fit each training image's noise-level function in worker threads while training runs and store
   * them in the model (default true for in-memory images; streamed sources are not fitted).
   */
  noiseFits?: boolean;
  network?: Partial<Omit<UNetConfig, 'dims' | 'variant'>>;
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
  | { type: 'start'; steps: number; firstStep: number; dims: 2 | 3; patchShape: number[]; batchSize: number; trainVolumes: number; valVolumes: number; resumed: boolean }
  | { type: 'step'; step: number; steps: number; loss: number; learningRate: number; stepsPerSecond: number; lastValLoss: number | null }
  | { type: 'validation'; step: number; valLoss: number; best: boolean; learningRate: number }
  | { type: 'checkpoint'; step: number }
  | { type: 'warning'; message: string }
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
}

/** Trains a model and writes its folder. Returns the final manifest. */
export async function trainModel(opts: TrainOptions): Promise<ModelManifest> {
  const method: MethodName = opts.method ?? 'n2v';
  if (opts.sources && (opts.inputs?.length || opts.volumes)) throw new UsageError('train takes either chunked sources or images, not both');
  const named = opts.sources ? [] : (opts.volumes ?? (await readInputs(opts.inputs ?? [])));
  if (named.length === 0 && !opts.sources?.length) throw new UsageError('train needs at least one input image');
  const dims = opts.sources ? inferSourceDims(opts.sources) : inferDims(named);
  if (opts.prior) validateNoiseSpec(opts.prior, 'train --prior');
  const network: UNetConfig = {
    ...defaultUNetConfig(dims),
    ...opts.network,
    dims,
    variant: method === 'n2v2' ? 'n2v2' : 'n2v',
    ...(opts.prior ? { outputChannels: 2 } : {}),
  };
  const geometry = unetGeometry(network);
  const patchShape = (opts.patchShape ?? (dims === 2 ? [64, 64] : [32, 64, 64])) as number[];
  validatePatchShape(patchShape, dims, geometry.sizeMultiple);
  for (const { volume, name } of named) {
    volume.shape.forEach((s, axis) => {
      if (s < patchShape[axis]) {
        throw new InputError(name, `image is ${volume.shape.join('x')}, smaller than the training patch ${patchShape.join('x')}; use a smaller --patch`);
      }
    });
  }
  for (const source of opts.sources ?? []) sourceBounds(source, patchShape);
  const batchSize = opts.batchSize ?? (dims === 2 ? 16 : 4);
  const steps = opts.steps ?? 1000;
  const seed = opts.seed ?? 1;
  const lossKind = opts.loss ?? 'mse';
  const masking: MaskOptions = {
    fraction: opts.maskFraction ?? defaultMaskOptions.fraction,
    strategy: opts.strategy ?? (method === 'n2v2' ? 'median' : defaultMaskOptions.strategy),
    radius: defaultMaskOptions.radius,
  };
  if (!(masking.fraction > 0 && masking.fraction < 0.5)) throw new UsageError(`--mask-fraction must be in (0, 0.5), got ${masking.fraction}`);
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
  if (opts.sources) {
    data = await prepareStreamingData(opts.sources, {
      patchShape,
      batchSize,
      seed,
      valFraction,
      valPatches,
      masking,
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
      valBatches: makeValidationBatches(validation, patchShape, batchSize, valPatches, normalisation, masking, seed),
    };
  }
  const { normalisation, valBatches } = data;
  // Started now, awaited at the end: the fits run at low priority beside training.
  const noiseFits =
    opts.noiseFits === false || opts.sources
      ? null
      : fitNoiseInWorkers(named.map(({ volume, name }) => ({ name, data: volume.data, shape: volume.shape, sampleType: volume.sampleType }))).catch(
          (err: Error) => {
            opts.onEvent?.({ type: 'warning', message: `noise-level fits failed, the model is saved without them: ${err.message}` });
            return null;
          },
        );
  const lossFn: MaskedLossFn = opts.prior
    ? gaussianPriorLoss(normalisedNoiseVariance(opts.prior, normalisation))
    : (prediction, target, mask) => maskedLoss(prediction, target, mask, lossKind);

  let model: tfl.LayersModel;
  const optimizer = tf.train.adam(baseLearningRate);
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
  if (resumed) {
    const restored = await readCheckpoint(checkpointDir, optimizer);
    model = restored.model;
    state = restored.state;
  } else {
    model = buildUNet(network, seed);
  }
  setLearningRate(optimizer, state.learningRate);

  opts.onEvent?.({
    type: 'start',
    steps,
    firstStep: state.stepsDone,
    dims,
    patchShape,
    batchSize,
    trainVolumes: data.trainNames.length,
    valVolumes: data.validationNames.length,
    resumed,
  });

  const manifestFor = (finished: boolean): ModelManifest => ({
    format: 'blindspot-model',
    formatVersion: 1,
    method,
    network,
    normalisation,
    patchShape,
    masking,
    loss: opts.prior ? 'prior-nll' : lossKind,
    ...(opts.prior ? { prior: { noise: opts.prior } } : {}),
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
    if (isValidationStep) {
      const valLoss = evaluateValidation(model, valBatches, lossFn);
      record.valLoss = valLoss;
      lastValLoss = valLoss;
      const improved = state.bestValLoss === null || valLoss < state.bestValLoss;
      if (improved) {
        state.bestValLoss = valLoss;
        state.bestStep = state.stepsDone;
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
        await writeCheckpoint(checkpointDir, model, optimizer, state);
        opts.onEvent?.({ type: 'checkpoint', step: state.stepsDone });
      }
    } else {
      state.history.push(record);
    }
    opts.onEvent?.({ type: 'step', step: state.stepsDone, steps, loss: result.loss, learningRate: state.learningRate, stepsPerSecond, lastValLoss });
    if (opts.signal?.aborted && state.stepsDone < steps) {
      if (!isValidationStep) await writeCheckpoint(checkpointDir, model, optimizer, state);
      interrupted = true;
      opts.onEvent?.({ type: 'interrupted', step: state.stepsDone });
      stepDone.complete();
      return;
    }
    stepDone.next();
  };

  const run$ = stepsOnDemand(state.stepsDone, steps, aheadBatches, stepDone).pipe(
    data.patches,
    augmentPatches({ enabled: opts.augment ?? true }),
    maskN2V(masking),
    batchPatches({ batchSize }),
    tap((batch) => opts.onBatchReady?.(batch.step)),
    trainSteps({
      model,
      optimizer,
      loss: lossFn,
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
    throw new TrainingInterrupted(opts.out, state.stepsDone);
  }
  // The best model is what the folder holds; record the finished run in its manifest.
  if (state.bestStep === 0) await saveModelFolder(opts.out, model, manifestFor(true));
  const noise = (await noiseFits) ?? undefined;
  const manifest: ModelManifest = { ...manifestFor(true), ...(noise ? { noise } : {}) };
  await writeFilesAtomically(opts.out, { [MANIFEST_JSON]: JSON.stringify(manifest, null, 2) + '\n' });
  await fs.rm(checkpointDir, { recursive: true, force: true });
  opts.onEvent?.({ type: 'done', steps: state.stepsDone, bestStep: state.bestStep, bestValLoss: state.bestValLoss, seconds: state.wallSeconds });
  model.dispose();
  optimizer.dispose();
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
  const { volume, name } = named[0];
  const axis = 0;
  const size = volume.shape[axis];
  const valSize = Math.max(patchShape[axis], Math.round(size * fraction));
  if (size - valSize < patchShape[axis]) {
    // Too small to split: validate on the training image (still tracks convergence, not generalisation).
    return { train: named, validation: named };
  }
  return {
    train: [{ volume: sliceAxis0(volume, 0, size - valSize), name }],
    validation: [{ volume: sliceAxis0(volume, size - valSize, size), name: `${name} (validation slab)` }],
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
  const { reader, name } = sources[0];
  const { shape, chunks } = reader.info;
  const chunkRows = Math.ceil(shape[0] / chunks[0]);
  const valRows = Math.max(Math.ceil(patchShape[0] / chunks[0]), Math.round(chunkRows * fraction));
  const slabStart = (chunkRows - valRows) * chunks[0];
  // The slab must hold a patch too (the last chunk row may be short).
  if (slabStart < patchShape[0] || shape[0] - slabStart < patchShape[0]) return { train: sources, validation: sources };
  const whole = { start: shape.map(() => 0), end: [...shape] };
  return {
    train: [{ reader, name, bounds: { start: whole.start, end: [slabStart, ...whole.end.slice(1)] } }],
    validation: [{ reader, name: `${name} (validation slab)`, bounds: { start: [slabStart, ...whole.start.slice(1)], end: whole.end } }],
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
    masking: MaskOptions;
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
  const stepBytes = regionsPerStep * Math.max(...[...train, ...validation].map((s) => regionBytes(s, patchShape, settings.regionChunks)));
  const buffers = streamingTrainBufferBytes({
    patchShape,
    batchSize,
    aheadBatches: opts.aheadBatches,
    valPatches: opts.valPatches,
    chunkShape: sources[0].reader.info.chunks,
    readConcurrency: settings.readConcurrency,
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
      const m = maskPatch(p.data, p.shape, opts.masking, p.rng);
      batch.inputs.set(m.input, i * per);
      batch.targets.set(p.data, i * per);
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
 * packing), the fixed validation set (input, target, mask), the quantile sketch and the chunks of
 * one window of normalisation reads (raw and cropped).
 */
export function streamingTrainBufferBytes(opts: {
  patchShape: readonly number[];
  batchSize: number;
  aheadBatches?: number;
  valPatches: number;
  chunkShape: readonly number[];
  readConcurrency?: number;
}): number {
  const patchBytes = 4 * opts.patchShape.reduce((a, b) => a * b, 1);
  const queue = ((opts.aheadBatches ?? 2) + 1) * 6 * opts.batchSize * patchBytes;
  const validation = 3 * opts.valPatches * patchBytes;
  const statistics = 4 * defaultSketchCapacity + 2 * (opts.readConcurrency ?? 4) * 4 * opts.chunkShape.reduce((a, b) => a * b, 1);
  return queue + validation + statistics;
}

function mib(bytes: number): string {
  return `${(bytes / 2 ** 20).toFixed(1)} MiB`;
}

interface ValidationBatch {
  shape: number[];
  inputs: Float32Array;
  targets: Float32Array;
  masks: Float32Array;
}

/** A fixed, seeded set of masked validation patches: the same every validation, so losses compare. */
function makeValidationBatches(
  validation: NamedVolume[],
  patchShape: number[],
  batchSize: number,
  count: number,
  normalisation: Normalisation,
  masking: MaskOptions,
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
      const { volume, name } = validation[rng.int(validation.length)];
      const patch = normalise(randomPatch(volume, patchShape as unknown as Shape, rng, name), normalisation);
      const m = maskPatch(patch, patchShape as unknown as Shape, masking, rng);
      inputs.set(m.input, i * per);
      targets.set(patch, i * per);
      masks.set(m.mask, i * per);
    }
    batches.push({ shape: [n, ...patchShape, 1], inputs, targets, masks });
  }
  return batches;
}

function evaluateValidation(model: tfl.LayersModel, batches: ValidationBatch[], lossFn: MaskedLossFn): number {
  let sum = 0;
  let weight = 0;
  for (const b of batches) {
    const value = tf.tidy(() => {
      const pred = model.apply(tf.tensor(b.inputs, b.shape), { training: false }) as tf.Tensor;
      return lossFn(pred, tf.tensor(b.targets, b.shape), tf.tensor(b.masks, b.shape)).dataSync()[0];
    });
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

async function readCheckpoint(dir: string, optimizer: tf.Optimizer): Promise<{ model: tfl.LayersModel; state: CheckpointState }> {
  const stateFile = path.join(dir, 'state.json');
  let state: CheckpointState;
  try {
    state = JSON.parse(await fs.readFile(stateFile, 'utf8')) as CheckpointState;
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
