/**
 * Knowledge distillation (Wu et al., ECCV 2020, second stage): a plain U-Net student (n2v's network,
 * no masking: every pixel in the loss) trained to reproduce a teacher model's denoised output (the
 * posterior mean of laine19 / dbsn, or any model's output) on patches of the same data.
 *
 * No new training machinery: the teacher denoises the inputs, and the student is trained by the
 * existing paired path (trainModel, method 'care') with those outputs as its targets:
 * - image files: the teacher denoises each in memory (as `blindspot denoise` does), and the pairs
 *   are trained from memory (train holds the images in memory for files anyway);
 * - chunked inputs (Zarr, OME-Zarr, S3, TIFF stacks): the teacher streams each into a temporary
 *   float32 Zarr beside the student's folder (`<out>.teacher-targets/`, never inside an input), and
 *   the student trains from both streams (the target's chunks under each region through the same
 *   bounded cache). The folder is removed when the student is done; an interrupted run keeps it,
 *   and `resume` continues both the teacher's pass (verified chunk by chunk) and the training.
 * Optionally (`clean`), clean images noised by the teacher's fitted noise model (its prior, else the
 * mean Poisson-Gaussian summary of its training images' noise-level fits), paired with the clean
 * image as target: the paper's synthetic pairs {(x, x + g(x) n0)}.
 * The student is an ordinary model folder; its manifest records the teacher (`distillation`).
 */
import { createHash } from 'node:crypto';
import { promises as fs } from 'node:fs';
import path from 'node:path';
import { InputError, OutputError, UsageError } from '../core/errors.js';
import { Rng } from '../core/rng.js';
import type { Volume } from '../core/volume.js';
import type { NoiseSpec } from '../models/bayes.js';
import { describeNetwork } from '../models/network.js';
import { loadModelFolder, MANIFEST_JSON, readManifest, WEIGHTS_BIN, writeFilesAtomically, type DistillationRecord, type ModelManifest } from '../models/io.js';
import type { S3Settings } from '../storage/s3.js';
import { openChunkedSource } from '../storage/open.js';
import { readImage } from '../storage/index.js';
import { exists } from '../storage/common.js';
import type { InferenceEngine } from '../engines/engine.js';
import { type EngineRequest, openModelEngine } from '../engines/modelEngine.js';
import { denoiseVolume } from './denoise.js';
import { denoiseUrl } from './streamDenoise.js';
import { assertOutputOutsideInputs } from '../storage/location.js';
import { trainModel, TrainingInterrupted, type NamedSource, type NamedVolume, type TrainEvent, type TrainOptions } from './train.js';

/** The train options a distillation passes through to the student's training unchanged. */
export type StudentTrainOptions = Pick<
  TrainOptions,
  | 'steps'
  | 'batchSize'
  | 'patchShape'
  | 'seed'
  | 'learningRate'
  | 'learningRateSchedule'
  | 'adamEpsilon'
  | 'loss'
  | 'network'
  | 'normalisation'
  | 'augment'
  | 'valFraction'
  | 'valPatches'
  | 'validateEvery'
  | 'timeBudgetSeconds'
  | 'patience'
  | 'resume'
  | 'overwrite'
  | 'backend'
  | 'signal'
  | 'aheadBatches'
>;

/** Streaming (chunked inputs): how to open them, and the memory bound of the teacher's pass and of training. */
export interface DistillStreaming {
  /** Bound for the teacher's streamed denoise and for the training data side (default 2 GiB). */
  maxMemoryBytes?: number;
  s3?: S3Settings;
  channel?: number;
  time?: number;
  /** Skip training patches whose mean is below this raw intensity. */
  background?: number;
}

export interface DistillOptions extends StudentTrainOptions {
  /** The teacher's model folder. */
  teacher: string;
  /** Image files (already expanded), or chunked inputs (.zarr, s3://, TIFF stacks) with `streaming`. */
  inputs?: string[];
  /** Or in-memory images (library callers, benchmarks): the teacher denoises each; a given `target` is ignored. */
  volumes?: NamedVolume[];
  /** Stream the inputs (they are chunked arrays); absent: the inputs are image files read whole. */
  streaming?: DistillStreaming;
  /** Clean image files to noise with the teacher's noise model and add as (noisy, clean) pairs. Image-file inputs only. */
  clean?: string[];
  /** The student's model folder. */
  out: string;
  /** Average the teacher's 8 flips/rotations for its targets (slower teacher pass, slightly better targets). */
  tta?: boolean;
  /** The teacher pass's inference engine and device (engines/select.ts); default auto, as `denoise`. */
  engine?: EngineRequest;
  command?: string[];
  onEvent?: (event: DistillEvent) => void;
}

export type DistillEvent =
  | { type: 'teacher'; manifest: ModelManifest; weightsSha256: string }
  | { type: 'teacher-image'; input: string; index: number; count: number; seconds: number }
  | { type: 'clean-pairs'; count: number; noise: NoiseSpec }
  | { type: 'note'; message: string }
  | { type: 'train'; event: TrainEvent };

/** Where the teacher's streamed outputs go: beside the student's folder, removed when it is done. */
export function teacherTargetsDir(out: string): string {
  return `${path.resolve(out).replace(/[/\\]+$/, '')}.teacher-targets`;
}

/** Trains the student and returns its manifest (with the `distillation` record). */
export async function distillModel(opts: DistillOptions): Promise<ModelManifest> {
  const inputs = opts.inputs ?? [];
  if (inputs.length > 0 && opts.volumes) throw new UsageError('distill takes either input files or in-memory volumes, not both');
  if (inputs.length === 0 && !opts.volumes?.length) throw new UsageError('distill needs at least one input (the data the teacher denoises)');
  if (opts.volumes && opts.streaming) throw new UsageError('in-memory volumes are not streamed: leave out streaming');
  if (opts.clean?.length && opts.streaming) {
    throw new UsageError('--clean pairs are made in memory: they go with image-file inputs, not streamed (.zarr, s3://, --stream) ones');
  }
  // The student's folder (and the teacher's temporary outputs beside it) must not touch an input or the teacher.
  const scratch = teacherTargetsDir(opts.out);
  // By real location (links followed; S3 by bucket and prefix), before the teacher runs.
  const readOnly = [...inputs, ...(opts.clean ?? [])];
  await assertOutputOutsideInputs(opts.out, readOnly, { what: '--out' });
  if (opts.streaming) await assertOutputOutsideInputs(scratch, readOnly, { what: "the teacher outputs' folder" });
  await assertOutputOutsideInputs(opts.out, [opts.teacher], { what: "the student's folder (it would overwrite the teacher)" });
  await assertStudentFolderUsable(opts.out, opts);
  const teacherManifest = await readManifest(opts.teacher);
  const weightsSha256 = await sha256File(path.join(opts.teacher, WEIGHTS_BIN), opts.teacher);
  opts.onEvent?.({ type: 'teacher', manifest: teacherManifest, weightsSha256 });
  const cleanNoise = opts.clean?.length ? teacherNoise(teacherManifest, opts.teacher) : undefined;

  const record: DistillationRecord = {
    teacher: {
      path: path.resolve(opts.teacher),
      method: teacherManifest.method,
      network: describeNetwork(teacherManifest.network),
      weightsSha256,
    },
    targets: opts.tta ? "the teacher's denoised output, averaged over 8 flips/rotations" : "the teacher's denoised output",
    ...(opts.clean?.length ? { clean: opts.clean, cleanNoise } : {}),
  };
  const common = {
    ...pickStudentOptions(opts),
    out: opts.out,
    method: 'care' as const,
    // The student learns the teacher, not the data's noise: no per-image noise fits.
    noiseFits: false,
    command: opts.command,
    onEvent: (event: TrainEvent) => opts.onEvent?.({ type: 'train', event }),
  };

  let manifest: ModelManifest;
  if (opts.streaming) {
    manifest = await distillStreamed(inputs, opts, opts.streaming, scratch, common);
  } else {
    const teacher = await teacherPairs(opts, teacherManifest);
    const clean = opts.clean?.length ? await cleanPairs(opts.clean, cleanNoise!, opts.seed ?? 1, opts.onEvent) : [];
    manifest = await trainModel({ ...common, volumes: [...clean, ...teacher], valFraction: validationFraction(opts.valFraction, teacher.length, clean.length, opts.onEvent) });
  }
  // The record goes into the finished folder's manifest (renamed into place: the folder stays complete).
  const withRecord: ModelManifest = { ...manifest, distillation: record };
  await writeFilesAtomically(opts.out, { [MANIFEST_JSON]: JSON.stringify(withRecord, null, 2) + '\n' });
  return withRecord;
}

/** Image-file inputs: each read and denoised by the teacher in memory; the output is the input's target. */
async function teacherPairs(opts: DistillOptions, manifest: ModelManifest): Promise<NamedVolume[]> {
  const { model } = await loadModelFolder(opts.teacher);
  const pairs: NamedVolume[] = [];
  const given = opts.volumes ?? [];
  const names = opts.volumes ? given.map((v) => v.name) : (opts.inputs ?? []);
  let engine: InferenceEngine | undefined;
  try {
    engine = await openModelEngine(opts.engine ?? {}, { modelDir: opts.teacher, model, manifest, output: 'denoised' });
    opts.onEvent?.({ type: 'note', message: `the teacher's pass on ${engine.describe()}` });
    for (const [index, input] of names.entries()) {
      // One image at a time from files: only the inputs and their targets stay in memory.
      const volume = opts.volumes ? given[index].volume : await readImage(input);
      if (volume.shape.length !== manifest.network.dims) {
        throw new InputError(input, `is ${volume.shape.length}D but the teacher ${opts.teacher} was trained on ${manifest.network.dims}D data`);
      }
      const t0 = performance.now();
      const target = await denoiseVolume(model, manifest, volume, { tta: opts.tta, engine });
      opts.onEvent?.({ type: 'teacher-image', input, index, count: names.length, seconds: (performance.now() - t0) / 1000 });
      pairs.push({ volume, name: input, target: { ...target, sampleType: 'float32' }, targetName: `${input} (teacher output)` });
    }
  } finally {
    await engine?.dispose();
    model.dispose();
  }
  return pairs;
}

/**
 * Chunked inputs: the teacher streams each into `<scratch>/<i>.zarr` (float32, level 0 only), then
 * the student trains from the input and that output as a streamed pair. The scratch folder is removed
 * at the end, kept when interrupted (for `resume`).
 */
async function distillStreamed(
  inputs: string[],
  opts: DistillOptions,
  streaming: DistillStreaming,
  scratch: string,
  common: Omit<TrainOptions, 'inputs' | 'volumes' | 'sources'>,
): Promise<ModelManifest> {
  const maxMemoryBytes = streaming.maxMemoryBytes ?? 2 * 2 ** 30;
  if ((await exists(scratch)) && !opts.resume) {
    throw new OutputError(scratch, 'holds the teacher outputs of an interrupted distillation: pass --resume to continue it, or delete the folder');
  }
  const open = { channel: streaming.channel, time: streaming.time, s3: streaming.s3 };
  const sources: NamedSource[] = [];
  let keepScratch = false;
  try {
    for (const [index, input] of inputs.entries()) {
      const targetUrl = path.join(scratch, `${index}.zarr`);
      const t0 = performance.now();
      const resume = await exists(targetUrl);
      const result = await denoiseUrl({
        input,
        out: targetUrl,
        modelDir: opts.teacher,
        maxMemoryBytes,
        ...open,
        resume,
        tta: opts.tta,
        engine: opts.engine,
        outputType: 'float32',
        // Level 0 only: the student reads nothing else.
        pyramidLevels: 1,
        command: [...(opts.command ?? ['blindspot', 'distill']), '(teacher pass)'],
        signal: opts.signal,
      });
      if (result.interrupted) {
        keepScratch = true;
        throw new TrainingInterrupted(opts.out, 0);
      }
      opts.onEvent?.({ type: 'teacher-image', input, index, count: inputs.length, seconds: (performance.now() - t0) / 1000 });
      sources.push({
        reader: await openChunkedSource(input, open),
        name: input,
        target: await openChunkedSource(targetUrl),
        targetName: `${input} (teacher output)`,
      });
    }
    return await trainModel({
      ...common,
      sources,
      streaming: {
        maxMemoryBytes,
        ...(streaming.background !== undefined ? { background: { threshold: streaming.background } } : {}),
      },
    });
  } catch (err) {
    if (err instanceof TrainingInterrupted) keepScratch = true;
    throw err;
  } finally {
    await Promise.all(sources.flatMap((s) => [s.reader.close?.(), s.target?.close?.()]));
    if (!keepScratch) await fs.rm(scratch, { recursive: true, force: true });
  }
}

/**
 * The teacher's noise model in input units: its prior's (given, learned or fitted), else the mean
 * Poisson-Gaussian summary of its training images' noise-level fits. Neither: UsageError.
 */
export function teacherNoise(manifest: ModelManifest, teacherDir: string): NoiseSpec {
  if (manifest.prior) return manifest.prior.noise;
  const fits = manifest.noise ?? [];
  if (fits.length > 0) {
    const a = fits.reduce((s, f) => s + f.a, 0) / fits.length;
    const b = fits.reduce((s, f) => s + f.b, 0) / fits.length;
    return { kind: 'poisson-gaussian', a: Math.max(0, a), b: Math.max(0, b) };
  }
  throw new UsageError(
    `the teacher ${teacherDir} records no noise model (no prior, no noise-level fits of its training images), so --clean images cannot be noised like its data; ` +
      'train the teacher with --prior, or with its noise fits (the default for image inputs)',
  );
}

/** Adds noise drawn from `noise` to clean values: x + sqrt(var(x)) n0, n0 ~ N(0, 1) (not clipped). */
export function noiseLike(clean: Float32Array, noise: NoiseSpec, rng: Rng): Float32Array {
  const out = new Float32Array(clean.length);
  for (let i = 0; i < clean.length; i++) {
    const x = clean[i];
    const variance = noise.kind === 'gaussian' ? noise.sigma * noise.sigma : Math.max(0, noise.a * x + noise.b);
    out[i] = x + Math.sqrt(variance) * rng.normal();
  }
  return out;
}

/**
 * The validation fraction for train: it holds out the last round(n * fraction) images (at least one)
 * when there are several, and the teacher's pairs come last, so validation measures what the student
 * is for (reproducing the teacher). With --clean and too few teacher pairs to spare one, every image
 * trains and validation uses the training images (fraction 0), or the teacher's pairs would not be
 * trained on at all.
 */
function validationFraction(fraction: number | undefined, teacherPairs: number, cleanPairs: number, onEvent?: (e: DistillEvent) => void): number | undefined {
  if (cleanPairs === 0) return fraction;
  const f = fraction ?? 0.1;
  if (f <= 0) return f;
  const heldOut = Math.max(1, Math.round((teacherPairs + cleanPairs) * f));
  if (heldOut < teacherPairs) return f;
  onEvent?.({ type: 'note', message: `${teacherPairs} input(s) are too few to hold one out beside the --clean pairs: validation uses the training images` });
  return 0;
}

/** Clean images noised by the teacher's noise model, each paired with itself as target. */
async function cleanPairs(files: string[], noise: NoiseSpec, seed: number, onEvent?: (e: DistillEvent) => void): Promise<NamedVolume[]> {
  const rng = new Rng(seed ^ 0x636c6e);
  const pairs: NamedVolume[] = [];
  for (const file of files) {
    const clean: Volume = await readImage(file);
    pairs.push({
      volume: { data: noiseLike(clean.data, noise, rng), shape: clean.shape, sampleType: 'float32' },
      name: `${file} (noised by the teacher's noise model)`,
      target: { ...clean, data: Float32Array.from(clean.data), sampleType: 'float32' },
      targetName: file,
    });
  }
  onEvent?.({ type: 'clean-pairs', count: pairs.length, noise });
  return pairs;
}

function pickStudentOptions(opts: DistillOptions): StudentTrainOptions {
  const keys: (keyof StudentTrainOptions)[] = [
    'steps',
    'batchSize',
    'patchShape',
    'seed',
    'learningRate',
    'learningRateSchedule',
    'adamEpsilon',
    'loss',
    'network',
    'normalisation',
    'augment',
    'valFraction',
    'valPatches',
    'validateEvery',
    'timeBudgetSeconds',
    'patience',
    'resume',
    'overwrite',
    'backend',
    'signal',
    'aheadBatches',
  ];
  const out: Record<string, unknown> = {};
  for (const k of keys) if (opts[k] !== undefined) out[k] = opts[k];
  return out as StudentTrainOptions;
}

/**
 * train's own check of --out (a finished model needs overwrite, an interrupted one resume, anything
 * else is refused), made before the teacher's pass, which can take longer than the training.
 */
async function assertStudentFolderUsable(out: string, opts: Pick<DistillOptions, 'overwrite' | 'resume'>): Promise<void> {
  let entries: string[];
  try {
    entries = await fs.readdir(out);
  } catch {
    return;
  }
  if (entries.includes('checkpoint')) {
    if (!opts.resume) throw new OutputError(out, 'holds an interrupted training run: pass --resume to continue it, or choose another --out');
  } else if (entries.includes(MANIFEST_JSON)) {
    if (!opts.overwrite) throw new OutputError(out, 'already holds a trained model: choose another --out, or pass --overwrite');
  } else if (entries.length > 0) {
    throw new OutputError(out, 'exists and is not a blindspot model folder: choose another --out');
  }
}

async function sha256File(file: string, teacherDir: string): Promise<string> {
  try {
    return createHash('sha256').update(await fs.readFile(file)).digest('hex');
  } catch (err) {
    throw new InputError(teacherDir, `teacher model folder is incomplete: ${(err as Error).message}`);
  }
}

