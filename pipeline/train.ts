/**
 * Training of every method (methods/registry.ts; the loop calls the Method interface and names
 * none): random patches -> augmentation -> the method's patch preparation -> batches -> optimiser
 * steps, with validation, reduce-on-plateau, best-model selection, checkpoints and resume. This
 * file is the loop; its checkpoints are trainCheckpoint.ts, the data side trainData.ts, the options and
 * events trainOptions.ts, the data-derived noise models trainNoise.ts, the closing comparison with a
 * calibrated classical filter classicalComparison.ts.
 * Patches come from in-memory volumes, or (with `sources`) stream from chunked arrays of any size:
 * random chunk-aligned regions through a byte-bounded chunk cache, normalisation statistics from a
 * seeded sample of chunks, the producer at most `aheadBatches` batches in front of the model.
 * n2n / care pair each input with a target (files by sorted name, or streamed sources the same way):
 * the same patch of both, the same augmentation, the inputs' normalisation for both.
 */
import { promises as fs } from 'node:fs';
import path from 'node:path';
import { Subject, lastValueFrom, map, tap, defaultIfEmpty } from 'rxjs';
import * as tf from '@tensorflow/tfjs-core';
import type * as tfl from '@tensorflow/tfjs-layers';
import { InputError, OutputError, UsageError } from '../core/errors.js';
import { Rng } from '../core/rng.js';
import type { Shape, Volume } from '../core/volume.js';
import { buildNetwork, describeNetwork, networkGeometry } from '../models/network.js';
import { computeNormalisation, type Normalisation } from '../models/normalise.js';
import { defaultMaskOptions, type MaskOptions } from '../models/masking.js';
import { fitNoiseInWorkers } from '../workers/noisePool.js';
import { validateNoiseSpec, type NoiseSpec } from '../models/bayes.js';
import { createAdam } from '../models/optimizer.js';
import { augmentMethodPatch } from '../models/augment.js';
import type { Method, PatchPreparation, TrainingContext, ValidationBatch } from '../methods/method.js';
import { defaultMethodName, getMethod } from '../methods/registry.js';
import { validateMethodOptions } from '../methods/options.js';
import { defaultGridSide } from '../methods/shared.js';
import { MANIFEST_JSON, loadModelFolder, saveModelFolder, writeFilesAtomically, type MethodName, type MethodSettings, type ModelManifest, type PriorSource, type TrainingRecord } from '../models/io.js';
import { samplePatches } from '../operators/samplePatches.js';
import { sourceBounds } from '../operators/sampleRegions.js';
import type { MaskedPatch } from '../operators/maskN2V.js';
import { batchPatches } from '../operators/batchPatches.js';
import { trainSteps, type BatchLossFn, type StepResult } from '../operators/trainSteps.js';
import { stepsOnDemand } from './stepSource.js';
import { assertOutputOutsideInputs, assertWritableFolder } from '../storage/location.js';
import { VERSION } from '../core/version.js';
import { writeOnnxAfterTraining } from '../models/onnx/export.js';
import { assertTileFitsDevice } from './predict.js';
import type { TrainOptions } from './trainOptions.js';
import { attachTargets, inferDims, inferSourceDims, makeValidationBatches, pairSources, prepareStreamingData, preparePatch, readInputs, splitForValidation, validatePatchShape, type TrainingData } from './trainData.js';
import { initialLearnedSigma, pooledNoiseSpec, runLoss } from './trainNoise.js';
import { compareSavedModelWithClassical } from './classicalComparison.js';
import { cosineLearningRate, LEARNING_RATE_SCHEDULES, runProgress } from './learningRateSchedule.js';
import { openTrainEngine } from './trainEngine.js';
import { CHECKPOINT_DIR, inspectOutput, readCheckpoint, writeCheckpoint, type CheckpointState } from './trainCheckpoint.js';

export type { NamedSource, NamedVolume, StreamingTrainSettings, TrainEvent, TrainOptions } from './trainOptions.js';
export { pairByName, splitForValidation, splitSourcesForValidation, streamingTrainBufferBytes } from './trainData.js';
export type { NetworkOverrides } from '../methods/method.js';
export { minBatchSizeForBatchNorm } from '../methods/shared.js';

/** Trains a model and writes its folder. Returns the final manifest. */
export async function trainModel(opts: TrainOptions): Promise<ModelManifest> {
  const methodName: MethodName = opts.method ?? defaultMethodName;
  const method: Method = getMethod(methodName);
  if (opts.sources && (opts.inputs?.length || opts.volumes)) throw new UsageError('train takes either chunked sources or images, not both');
  validateOptions(method, opts);
  // The model folder: checked before any input is read or any step trained (real locations, links followed).
  await assertOutputOutsideInputs(opts.out, [...(opts.inputs ?? []), ...(opts.targets ?? []), ...(opts.sources ?? []).map((s) => s.name)], { refuseContaining: false, what: 'the model folder' });
  await assertWritableFolder(opts.out);
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
  const size = opts.networkSize ?? (opts.backend?.gpu === true || opts.backend?.name === 'tensorflow-gpu' ? 'paper' : 'small');
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
  const budgetSeconds = opts.timeBudgetSeconds;
  if (budgetSeconds !== undefined && !(budgetSeconds > 0)) throw new UsageError(`the time budget must be positive, got ${budgetSeconds} s`);
  // A budget without a step count trains until the budget is spent.
  const steps = opts.steps ?? (budgetSeconds !== undefined ? Number.MAX_SAFE_INTEGER : 1000);
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
  const validateEvery = opts.validateEvery ?? (opts.steps === undefined && budgetSeconds !== undefined ? 100 : Math.max(10, Math.round(steps / 20)));
  const patience = opts.patience ?? 5;
  const schedule = opts.learningRateSchedule ?? 'plateau';
  if (!LEARNING_RATE_SCHEDULES.includes(schedule)) throw new UsageError(`learningRateSchedule must be one of ${LEARNING_RATE_SCHEDULES.join(', ')}, got ${String(schedule)}`);
  if (opts.adamEpsilon !== undefined && !(opts.adamEpsilon > 0 && opts.adamEpsilon < 1)) throw new UsageError(`--adam-epsilon must be in (0, 1), got ${opts.adamEpsilon}`);
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
  // One in-memory image or stack: its held-out slab, scored against a classical filter at the end.
  let heldOutForCheck: { volume: Volume; name: string } | null = null;
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
    if (named.length === 1 && validation.length === 1 && opts.classicalCheck !== false) heldOutForCheck = validation[0];
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
  const optimizer = createAdam(baseLearningRate, opts.adamEpsilon);
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
  // A GPU binds each tensor as one buffer: a batch of patches must fit the widest layer's.
  assertTileFitsDevice(model, geometry.sizeMultiple, patchShape, batchSize, 'use a smaller --patch or --batch-size');
  setLearningRate(optimizer, state.learningRate);
  // After the restore (runLoss says why). A fresh run (or a checkpoint without it) starts sigma at the
  // validation patches' noise level; the likelihood refines it.
  const { learnedLogSigma, noiseVariance, maskedLoss: maskedLossFn, likelihoodNoise, noiseLikelihood, extraVariables } = runLoss({
    priorMode,
    priorNoise,
    lossKind,
    normalisation,
    startLogSigma: () => state.learnedLogSigma ?? Math.log(initialLearnedSigma(valBatches)),
    variableName: `learned_noise_log_sigma_${seed}_${Date.now()}`,
    likelihood: method.likelihood === true,
    ...(opts.noiseModel ? { noiseModel: opts.noiseModel } : {}),
  });
  // The method's part of the run: its batch loss, validation hook, manifest and checkpoint state.
  const context: TrainingContext = { seed, grid, maskedLoss: maskedLossFn, noiseVariance, noiseLikelihood };
  const methodRun = method.training({ ...context, saved: savedState });
  const batchLoss: BatchLossFn = methodRun.batchLoss;
  const validationLoss: BatchLossFn = method.validation?.loss(context) ?? batchLoss;
  const trainEngine = await openTrainEngine({
    engine: opts.trainEngine,
    model,
    methodName,
    methodRun,
    loss: noiseVariance !== undefined ? 'prior' : lossKind,
    ...(opts.backend?.threads !== undefined ? { threads: opts.backend.threads } : {}),
    extraVariables,
  });
  const gradientEngine = trainEngine.engine;
  const priorRecord = (): ModelManifest['prior'] => {
    if (learnedLogSigma !== null) {
      // Normalised units -> input units: sigma scales with the normalisation.
      // The sigma trained together with the weights the folder holds (those of the best validation).
      // No read of the variable here (webgpu has no synchronous read in Node): state.learnedLogSigma is
      // its value after every step; before the first it holds the value it was created with.
      const logSigma = state.bestLearnedLogSigma ?? state.learnedLogSigma ?? Math.log(initialLearnedSigma(valBatches));
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
    ...(budgetSeconds !== undefined ? { budgetSeconds } : {}),
    trainEngine: trainEngine.describe,
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
      ...(schedule !== 'plateau' ? { learningRateSchedule: schedule } : {}),
      ...(opts.adamEpsilon !== undefined ? { adamEpsilon: opts.adamEpsilon } : {}),
      ...(method.validation ? { validationLoss: method.validation.name } : {}),
      backend: opts.backend?.name ?? tf.getBackend(),
      threads: opts.backend?.threads ?? 1,
      ...(gradientEngine ? { trainEngine: 'onnx' as const } : {}),
      inputs: data.trainNames,
      validationInputs: data.validationNames,
      bestStep: state.bestStep,
      bestValLoss: state.bestValLoss,
      wallSeconds: state.wallSeconds,
      ...(budgetSeconds !== undefined ? { timeBudgetSeconds: budgetSeconds } : {}),
      finished,
    },
    history: state.history,
    createdBy: { name: 'blindspot', version: VERSION, command: opts.command ?? process.argv.slice(1) },
  });

  const segmentStart = performance.now();
  const wallAtStart = state.wallSeconds;
  const stepDone = new Subject<void>();
  let interrupted = false;
  let budgetSpent = false;
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
    if (schedule === 'cosine') {
      // The next step's rate, set before any checkpoint so that a resumed run goes on from it.
      state.learningRate = cosineLearningRate(baseLearningRate, runProgress({ stepsDone: state.stepsDone, steps, wallSeconds: state.wallSeconds, budgetSeconds }));
      setLearningRate(optimizer, state.learningRate);
    }
    const outOfTime = budgetSeconds !== undefined && state.wallSeconds >= budgetSeconds && state.stepsDone < steps;
    const isValidationStep = state.stepsDone % validateEvery === 0 || state.stepsDone === steps || outOfTime;
    if (learnedLogSigma !== null) state.learnedLogSigma = (await learnedLogSigma.data())[0];
    if (isValidationStep) {
      const valLoss = await evaluateValidation(model, valBatches, validationLoss);
      record.valLoss = valLoss;
      const hook = await methodRun.onValidation?.({ model, batches: valBatches, step: state.stepsDone });
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
        if (state.plateauWait >= patience && schedule === 'plateau') {
          state.learningRate = Math.max(state.learningRate * 0.5, 1e-6);
          setLearningRate(optimizer, state.learningRate);
          state.plateauWait = 0;
        }
      }
      opts.onEvent?.({ type: 'validation', step: state.stepsDone, valLoss, best: improved, learningRate: state.learningRate });
      if (state.stepsDone < steps && !outOfTime) {
        await writeCheckpoint(checkpointDir, model, optimizer, { ...state, ...methodRun.checkpointState?.() });
        opts.onEvent?.({ type: 'checkpoint', step: state.stepsDone });
      }
    } else {
      state.history.push(record);
    }
    opts.onEvent?.({
      type: 'step',
      step: state.stepsDone,
      steps,
      loss: result.loss,
      learningRate: state.learningRate,
      stepsPerSecond,
      lastValLoss,
      seconds: state.wallSeconds,
      ...(budgetSeconds !== undefined ? { budgetSeconds } : {}),
    });
    if (opts.signal?.aborted && state.stepsDone < steps) {
      if (!isValidationStep) await writeCheckpoint(checkpointDir, model, optimizer, { ...state, ...methodRun.checkpointState?.() });
      interrupted = true;
      opts.onEvent?.({ type: 'interrupted', step: state.stepsDone });
      stepDone.complete();
      return;
    }
    if (outOfTime) {
      // Ends like the last step: the folder holds the best validated model; batches already drawn are dropped.
      budgetSpent = true;
      opts.onEvent?.({ type: 'time-budget-spent', step: state.stepsDone, seconds: state.wallSeconds, budgetSeconds: budgetSeconds! });
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
      ...(gradientEngine ? { gradients: gradientEngine } : {}),
      extraVariables,
      afterEach: async (r) => {
        if (!interrupted && !budgetSpent) await afterStep(r);
      },
    }),
    tap({ complete: () => stepDone.complete() }),
    defaultIfEmpty(null),
  );
  try {
    await lastValueFrom(run$);
  } finally {
    stepDone.complete();
    await gradientEngine?.dispose();
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
    const offset = await method.afterTraining(best, valBatches);
    manifest = { ...manifest, outputOffsetRemoved: offset * normalisation.scale };
    await saveModelFolder(opts.out, best, manifest);
    best.dispose();
  } else {
    await writeFilesAtomically(opts.out, { [MANIFEST_JSON]: JSON.stringify(manifest, null, 2) + '\n' });
  }
  manifest = await writeOnnxAfterTraining(opts.out, manifest, (message) => opts.onEvent?.({ type: 'warning', message }));
  await fs.rm(checkpointDir, { recursive: true, force: true });
  if (heldOutForCheck) opts.onEvent?.({ type: 'classical-comparison', ...(await compareSavedModelWithClassical(opts.out, manifest, heldOutForCheck)) });
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

async function evaluateValidation(model: tfl.LayersModel, batches: ValidationBatch[], lossFn: BatchLossFn): Promise<number> {
  let sum = 0;
  let weight = 0;
  const apply = (x: tf.Tensor): tf.Tensor => model.apply(x, { training: false }) as tf.Tensor;
  for (const b of batches) {
    const loss = tf.tidy(() => lossFn(apply, tf.tensor(b.inputs, b.shape), tf.tensor(b.targets, b.shape), tf.tensor(b.masks, b.shape)));
    // Read asynchronously: webgpu cannot read a tensor synchronously in Node.
    const value = (await loss.data())[0];
    loss.dispose();
    sum += value * b.shape[0];
    weight += b.shape[0];
  }
  return sum / weight;
}

function setLearningRate(optimizer: tf.Optimizer, lr: number): void {
  // Adam reads `learningRate` on every step; it is protected in the typings only.
  (optimizer as unknown as { learningRate: number }).learningRate = lr;
}
