/** Option parsing shared by every `blindspot` command (each command lives in its own cli/ file or in main.ts). */
import { parseArgs, type ParseArgsConfig } from 'node:util';
import { ExitCode, UsageError } from '../core/errors.js';
import { initBackend, type BackendChoice } from '../backend/select.js';
import { createReporter, type Reporter } from './progress.js';

export const BACKENDS: BackendChoice[] = ['auto', 'tensorflow-gpu', 'tensorflow', 'wasm', 'cpu'];

export const commonOptions = {
  backend: { type: 'string', default: 'auto' },
  threads: { type: 'string' },
  json: { type: 'boolean', default: false },
  help: { type: 'boolean', short: 'h', default: false },
} as const satisfies ParseArgsConfig['options'];

export function parse<T extends NonNullable<ParseArgsConfig['options']>>(args: string[], options: T, allowPositionals: boolean) {
  try {
    return parseArgs({ args, options, allowPositionals, strict: true, allowNegative: true });
  } catch (err) {
    throw new UsageError((err as Error).message);
  }
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

export async function setUp(values: { backend?: string; threads?: string; json?: boolean }): Promise<{ reporter: Reporter; backend: { name: string; threads: number } }> {
  const reporter = createReporter({ json: values.json === true || !process.stderr.isTTY });
  const backend = choice('backend', values.backend, BACKENDS) ?? 'auto';
  const info = await initBackend({ backend, threads: intOption('threads', values.threads) });
  reporter.log(`backend ${info.name} (${info.detail}), ${info.threads} thread(s)`);
  reporter.event('backend', { ...info });
  return { reporter, backend: { name: info.name, threads: info.threads } };
}

/** First Ctrl-C / SIGTERM asks the run to stop at a safe point; a second one exits at once. */
export function interruptController(reporter: Reporter): { signal: AbortSignal; dispose: () => void } {
  const controller = new AbortController();
  const onSignal = (sig: NodeJS.Signals): void => {
    if (controller.signal.aborted) process.exit(ExitCode.interrupted);
    reporter.log(`${sig}: stopping after the current step (again to quit now)`);
    controller.abort();
  };
  process.on('SIGINT', onSignal);
  process.on('SIGTERM', onSignal);
  return {
    signal: controller.signal,
    dispose: () => {
      process.off('SIGINT', onSignal);
      process.off('SIGTERM', onSignal);
    },
  };
}

