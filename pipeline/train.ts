/**
 * Noise2Void / N2V2 training: random patches -> augmentation -> stratified masking -> batches ->
 * optimiser steps, with validation, reduce-on-plateau, best-model selection, checkpoints and resume.
 */
import { promises as fs } from 'node:fs';
import path from 'node:path';
import { Subject, lastValueFrom, tap, defaultIfEmpty } from 'rxjs';
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
import { samplePatches, mixSeed } from '../operators/samplePatches.js';
import { augmentPatches } from '../operators/augmentPatches.js';
import { maskN2V } from '../operators/maskN2V.js';
import { batchPatches } from '../operators/batchPatches.js';
import { trainSteps, type StepResult } from '../operators/trainSteps.js';
import { stepsOnDemand } from './stepSource.js';
import { readImage } from '../storage/index.js';
import { VERSION } from '../core/version.js';

export interface NamedVolume {
  volume: Volume;
  name: string;
}

export interface TrainOptions {
  /** Image files (already expanded), or give `volumes` directly. */
  inputs?: string[];
  volumes?: NamedVolume[];
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
  | { type: 'start'; steps: number; firstStep: number; dims: 2 | 3; patchShape: number[]; batchSize: number; trainVolumes: number; valVolumes: number; resumed: boolean }
  | { type: 'step'; step: number; steps: number; loss: number; learningRate: number; stepsPerSecond: number; lastValLoss: number | null }
  | { type: 'validation'; step: number; valLoss: number; best: boolean; learningRate: number }
  | { type: 'checkpoint'; step: number }
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
  const named = opts.volumes ?? (await readInputs(opts.inputs ?? []));
  if (named.length === 0) throw new UsageError('train needs at least one input image');
  const dims = inferDims(named);
  const network: UNetConfig = { ...defaultUNetConfig(dims), ...opts.network, dims, variant: method === 'n2v2' ? 'n2v2' : 'n2v' };
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
  const baseLearningRate = opts.learningRate ?? 4e-4;
  const validateEvery = opts.validateEvery ?? Math.max(10, Math.round(steps / 20));
  const patience = opts.patience ?? 5;
  const rng = new Rng(seed);

  const { train, validation } = splitForValidation(named, patchShape, opts.valFraction ?? 0.1);
  const normalisation: Normalisation = computeNormalisation(
    train.map((t) => t.volume),
    opts.normalisation ?? 'meanstd',
    { rng: rng.fork() },
  );

  // Resume or start fresh.
  const checkpointDir = path.join(opts.out, CHECKPOINT_DIR);
  const existing = await inspectOutput(opts.out);
  if (existing === 'checkpoint' && !opts.resume) {
    throw new OutputError(opts.out, 'holds an interrupted training run: pass --resume to continue it, or choose another --out');
  }
  if (existing === 'finished' && !opts.overwrite) {
    throw new OutputError(opts.out, 'already holds a trained model: choose another --out, or pass --overwrite');
  }
  if (existing === 'other') throw new OutputError(opts.out, 'exists and is not a blindspot model folder: choose another --out');

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

  const valBatches = makeValidationBatches(validation, patchShape, batchSize, opts.valPatches ?? Math.max(2 * batchSize, 32), normalisation, masking, seed);
  opts.onEvent?.({
    type: 'start',
    steps,
    firstStep: state.stepsDone,
    dims,
    patchShape,
    batchSize,
    trainVolumes: train.length,
    valVolumes: validation.length,
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
    loss: lossKind,
    training: {
      steps,
      stepsDone: state.stepsDone,
      batchSize,
      seed,
      learningRate: baseLearningRate,
      backend: opts.backend?.name ?? tf.getBackend(),
      threads: opts.backend?.threads ?? 1,
      inputs: train.map((t) => t.name),
      validationInputs: validation.map((v) => v.name),
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
      const valLoss = evaluateValidation(model, valBatches, lossKind);
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

  const run$ = stepsOnDemand(state.stepsDone, steps, 2, stepDone).pipe(
    samplePatches({ volumes: train, patchShape: patchShape as unknown as Shape, patchesPerStep: batchSize, normalisation, seed }),
    augmentPatches({ enabled: opts.augment ?? true }),
    maskN2V(masking),
    batchPatches({ batchSize }),
    trainSteps({
      model,
      optimizer,
      loss: lossKind,
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
  const manifest = manifestFor(true);
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

function evaluateValidation(model: tfl.LayersModel, batches: ValidationBatch[], kind: 'mse' | 'mae'): number {
  let sum = 0;
  let weight = 0;
  for (const b of batches) {
    const value = tf.tidy(() => {
      const pred = model.apply(tf.tensor(b.inputs, b.shape), { training: false }) as tf.Tensor;
      return maskedLoss(pred, tf.tensor(b.targets, b.shape), tf.tensor(b.masks, b.shape), kind).dataSync()[0];
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
