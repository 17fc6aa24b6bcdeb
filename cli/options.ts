/** Option parsing shared by every `blindspot` command (each command lives in its own cli/ file or in main.ts). */
import { parseArgs, type ParseArgsConfig } from 'node:util';
import { ExitCode, UsageError } from '../core/errors.js';
import { BACKEND_CHOICES, initBackend, type BackendChoice } from '../backend/select.js';
import { createReporter, type Reporter } from './progress.js';
import { DEVICE_CHOICES, ENGINE_CHOICES } from '../engines/engine.js';
import type { EngineRequest } from '../engines/select.js';
import type { NetworkOverrides } from '../methods/method.js';
import { LEARNING_RATE_SCHEDULES } from '../pipeline/learningRateSchedule.js';

export const BACKENDS: readonly BackendChoice[] = BACKEND_CHOICES;

/** A .zarr path or an s3:// URL: always read and written by the streaming pipelines (train, denoise, distill). */
export function isChunkedUrl(url: string): boolean {
  return /^s3:\/\//i.test(url) || /\.zarr\/?$/i.test(url);
}

export const commonOptions = {
  backend: { type: 'string', default: 'auto' },
  threads: { type: 'string' },
  json: { type: 'boolean', default: false },
  verbose: { type: 'boolean', default: false },
  help: { type: 'boolean', short: 'h', default: false },
} as const satisfies ParseArgsConfig['options'];

/**
 * The options of a training run, shared by train and distill (which trains a student): the schedule,
 * the U-Net overrides, and where streamed inputs come from.
 */
export const trainingRunOptions = {
  out: { type: 'string' },
  steps: { type: 'string' },
  'batch-size': { type: 'string' },
  patch: { type: 'string' },
  seed: { type: 'string' },
  'learning-rate': { type: 'string' },
  loss: { type: 'string' },
  depth: { type: 'string' },
  filters: { type: 'string' },
  'kernel-size': { type: 'string' },
  'batch-norm': { type: 'boolean' },
  widths: { type: 'string' },
  init: { type: 'string' },
  'batch-norm-epsilon': { type: 'string' },
  'lr-schedule': { type: 'string' },
  'adam-epsilon': { type: 'string' },
  normalisation: { type: 'string' },
  augment: { type: 'boolean', default: true },
  'val-fraction': { type: 'string' },
  'validate-every': { type: 'string' },
  'time-budget': { type: 'string' },
  stream: { type: 'boolean', default: false },
  'max-memory': { type: 'string' },
  's3-endpoint': { type: 'string' },
  channel: { type: 'string' },
  time: { type: 'string' },
  background: { type: 'string' },
  resume: { type: 'boolean', default: false },
  overwrite: { type: 'boolean', default: false },
} as const satisfies ParseArgsConfig['options'];

/** The schedule part of trainingRunOptions, parsed: what train and distill pass to the training loop alike. */
export function trainingSchedule(values: {
  steps?: string;
  'batch-size'?: string;
  patch?: string;
  seed?: string;
  'learning-rate'?: string;
  'lr-schedule'?: string;
  'adam-epsilon'?: string;
  loss?: string;
  normalisation?: string;
  'val-fraction'?: string;
  'validate-every'?: string;
  'time-budget'?: string;
}) {
  return {
    steps: intOption('steps', values.steps),
    batchSize: intOption('batch-size', values['batch-size']),
    patchShape: shapeOption('patch', values.patch),
    seed: intOption('seed', values.seed),
    learningRate: numberOption('learning-rate', values['learning-rate']),
    learningRateSchedule: choice('lr-schedule', values['lr-schedule'], LEARNING_RATE_SCHEDULES),
    adamEpsilon: numberOption('adam-epsilon', values['adam-epsilon']),
    loss: choice('loss', values.loss, ['mse', 'mae'] as const),
    normalisation: choice('normalisation', values.normalisation, ['meanstd', 'percentile'] as const),
    valFraction: numberOption('val-fraction', values['val-fraction']),
    validateEvery: intOption('validate-every', values['validate-every']),
    timeBudgetSeconds: values['time-budget'] !== undefined ? parseDuration(values['time-budget']) : undefined,
  };
}

/** The U-Net overrides of trainingRunOptions (--depth, --filters, --kernel-size, --batch-norm, --widths, --init, --batch-norm-epsilon). */
export function networkOverridesOption(values: {
  depth?: string;
  filters?: string;
  'kernel-size'?: string;
  'batch-norm'?: boolean;
  widths?: string;
  init?: string;
  'batch-norm-epsilon'?: string;
}): NetworkOverrides {
  const network: NetworkOverrides = {};
  const widths = choice('widths', values.widths, ['halving', 'level'] as const);
  const init = choice('init', values.init, ['glorot', 'torch'] as const);
  const batchNormEpsilon = numberOption('batch-norm-epsilon', values['batch-norm-epsilon']);
  if (widths !== undefined) network.widths = widths;
  if (init !== undefined) network.init = init;
  if (batchNormEpsilon !== undefined) network.batchNormEpsilon = batchNormEpsilon;
  const depth = intOption('depth', values.depth);
  const filters = intOption('filters', values.filters);
  const kernelSize = intOption('kernel-size', values['kernel-size']);
  if (depth !== undefined) network.depth = depth;
  if (filters !== undefined) network.filters = filters;
  if (kernelSize !== undefined) network.kernelSize = kernelSize;
  if (values['batch-norm'] !== undefined) network.batchNorm = values['batch-norm'];
  return network;
}

/** The inference engine options of denoise, watch and plan (engines/select.ts). */
export const engineOptions = {
  engine: { type: 'string', default: 'auto' },
  device: { type: 'string', default: 'auto' },
} as const satisfies ParseArgsConfig['options'];

export const ENGINE_HELP = `  --engine auto|onnx|tfjs   inference engine (default auto: ONNX Runtime where it loads, else TensorFlow.js)
  --device auto|cpu|cuda|tensorrt   ONNX Runtime execution provider (default auto: CUDA where its provider
                            libraries and a GPU are present, else CPU); a device that cannot start is an error`;

/** The engine request of `--engine`, `--device` and `--threads`. */
export function engineRequest(values: { engine?: string; device?: string; threads?: string }): EngineRequest {
  const request = {
    engine: choice('engine', values.engine, ENGINE_CHOICES) ?? 'auto',
    device: choice('device', values.device, DEVICE_CHOICES) ?? 'auto',
    threads: intOption('threads', values.threads) || undefined,
  };
  // Before any model loads: a usage error should cost nothing (engines/select.ts says the same).
  if (request.engine === 'tfjs' && request.device !== 'auto') {
    throw new UsageError(`--device ${request.device} picks an ONNX Runtime provider; with --engine tfjs the device is the tfjs --backend (leave --device out, or use --engine onnx)`);
  }
  return request;
}

export function parse<T extends NonNullable<ParseArgsConfig['options']>>(args: string[], options: T, allowPositionals: boolean) {
  try {
    return parseArgs({ args, options, allowPositionals, strict: true, allowNegative: true });
  } catch (err) {
    throw new UsageError((err as Error).message);
  }
}

/** '90s', '30m', '2h', '1d' or plain seconds -> seconds. */
export function parseDuration(text: string): number {
  const match = /^\s*(\d+(?:\.\d+)?)\s*(s|m|h|d)?\s*$/i.exec(text);
  if (!match) throw new UsageError(`a duration looks like 90s, 30m, 2h or 1d, got '${text}'`);
  const unit = { s: 1, m: 60, h: 3600, d: 86400 }[(match[2] ?? 's').toLowerCase() as 's' | 'm' | 'h' | 'd'];
  const seconds = Number(match[1]) * unit;
  if (!(seconds > 0)) throw new UsageError(`a duration must be positive, got '${text}'`);
  return seconds;
}

export function intOption(name: string, value: string | undefined): number | undefined {
  if (value === undefined) return undefined;
  const n = Number(value);
  if (!Number.isInteger(n) || n < 0) throw new UsageError(`--${name} must be a non-negative integer, got '${value}'`);
  return n;
}

export function numberOption(name: string, value: string | undefined): number | undefined {
  if (value === undefined) return undefined;
  const n = Number(value);
  if (!Number.isFinite(n)) throw new UsageError(`--${name} must be a number, got '${value}'`);
  return n;
}

export function shapeOption(name: string, value: string | undefined): number[] | undefined {
  if (value === undefined) return undefined;
  const parts = value.split(/[x,]/).map(Number);
  if (parts.length < 2 || parts.length > 3 || parts.some((p) => !Number.isInteger(p) || p <= 0)) {
    throw new UsageError(`--${name} must look like 64x64 or 32x64x64, got '${value}'`);
  }
  return parts;
}

export function choice<T extends string>(name: string, value: string | undefined, allowed: readonly T[]): T | undefined {
  if (value === undefined) return undefined;
  if (!allowed.includes(value as T)) throw new UsageError(`--${name} must be one of ${allowed.join(', ')}, got '${value}'`);
  return value as T;
}

export async function setUp(values: {
  backend?: string;
  threads?: string;
  json?: boolean;
  verbose?: boolean;
}): Promise<{ reporter: Reporter; backend: { name: string; threads: number; gpu: boolean } }> {
  const reporter = createReporter({ json: values.json === true || !process.stderr.isTTY });
  const backend = choice('backend', values.backend, BACKENDS) ?? 'auto';
  const info = await initBackend({ backend, threads: intOption('threads', values.threads) });
  reporter.log(`backend ${info.name} (${info.detail}), ${info.threads} thread(s)`);
  // A missing optional backend is the normal case: said only when asked.
  if (values.verbose === true) for (const reason of info.skipped ?? []) reporter.log(`  auto skipped: ${reason}`);
  reporter.event('backend', { ...info });
  return { reporter, backend: { name: info.name, threads: info.threads, gpu: info.gpu } };
}

/** How long after SIGTERM/SIGINT a run may take to stop cleanly (Kubernetes' default grace period is 30 s). */
export const DEFAULT_GRACE_SECONDS = 25;

/**
 * First Ctrl-C / SIGTERM asks the run to stop at a safe point (blocks in flight are finished, state
 * flushed); a second one, or `graceSeconds` passing, exits at once with the interrupted code. Writes
 * are atomic, so even then nothing is torn, and a rerun continues.
 */
export function interruptController(reporter: Reporter, graceSeconds = DEFAULT_GRACE_SECONDS): { signal: AbortSignal; dispose: () => void } {
  const controller = new AbortController();
  let deadline: NodeJS.Timeout | undefined;
  const onSignal = (sig: NodeJS.Signals): void => {
    if (controller.signal.aborted) process.exit(ExitCode.interrupted);
    reporter.log(`${sig}: stopping after the work in flight (at most ${graceSeconds} s; again to quit now)`);
    reporter.event('shutdown', { signal: sig, graceSeconds });
    deadline = setTimeout(() => {
      reporter.log(`still busy ${graceSeconds} s after ${sig}: quitting now; a rerun continues from the last stored block`);
      process.exit(ExitCode.interrupted);
    }, graceSeconds * 1000);
    deadline.unref();
    controller.abort();
  };
  process.on('SIGINT', onSignal);
  process.on('SIGTERM', onSignal);
  return {
    signal: controller.signal,
    dispose: () => {
      if (deadline) clearTimeout(deadline);
      process.off('SIGINT', onSignal);
      process.off('SIGTERM', onSignal);
    },
  };
}


/** Options that say how a run goes, not what it makes: a resumed or sharded run records the same command. */
// --engine / --device: the same network on another engine or device (equal within float rounding, docs/onnx-engine.md).
const RUN_OPTIONS_WITH_VALUE = new Set(['--shard', '--shard-count', '--grace-seconds', '--threads', '--report', '--engine', '--device']);
const RUN_FLAGS = new Set(['--resume', '--json', '--dry-run', '--verbose']);

/** `args` without the run options (see above), for provenance that must be identical between runs of one output. */
export function withoutRunOptions(args: readonly string[]): string[] {
  const kept: string[] = [];
  for (let i = 0; i < args.length; i++) {
    const name = args[i].split('=')[0];
    if (RUN_FLAGS.has(name)) continue;
    if (RUN_OPTIONS_WITH_VALUE.has(name)) {
      if (!args[i].includes('=')) i++;
      continue;
    }
    kept.push(args[i]);
  }
  return kept;
}
