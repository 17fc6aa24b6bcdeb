/**
 * A piscina pool of noise-level-function fits that runs beside training. Only the fit (Adam on an
 * MLP, the costly part) runs in the workers; sampling is one pass over the image here. Each
 * sample's buffer is moved to its worker with the `transferList` run option (zero-copy: the sender's
 * ArrayBuffer is detached; `Piscina.move` nested inside an object would transfer nothing).
 * Workers run at the lowest CPU priority (nice +19 per worker thread) so training keeps its cores.
 */
import { existsSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { Piscina } from 'piscina';
import type { FitOptions, NlfRecord } from '../noise/nlf.js';
import { sampleNoise, type NoiseImage, type NoiseSample, type SampleOptions } from '../noise/sample.js';
import type { NoiseFitTask } from './noiseFitTask.js';

/** What a fit reports per image: the NLF record (see noise/nlf.ts), named after the image. */
export type NoiseReport = NlfRecord;

export interface NoisePoolOptions {
  /** Worker threads; default max(1, cores - 1). */
  size?: number;
  /** Nice increment of the worker threads (0..19); default 19 (yield to training). */
  niceIncrement?: number;
  /**
   * Tasks handed to a worker at once (piscina concurrentTasksPerWorker); default 4. A worker runs them
   * one after another, so it stays busy even while the main thread is inside a long synchronous
   * training step and cannot dispatch the next task.
   */
  tasksPerWorker?: number;
  /**
   * Fraction of a core each fit may use (0..1]; default 1. Below 1 a worker sleeps between chunks of
   * Adam iterations: fits take longer but leave the cores to training.
   */
  cpuShare?: number;
}

export interface NoiseFitOptions extends SampleOptions, Omit<FitOptions, 'onProgress'> {}

export function defaultPoolSize(): number {
  const cores = typeof os.availableParallelism === 'function' ? os.availableParallelism() : os.cpus().length;
  return Math.max(1, cores - 1);
}

/**
 * The compiled task next to this module (dist/workers/noiseFitTask.js); when this module runs from
 * TypeScript source (vitest), the tsc output of the same file under dist/.
 */
export function noiseTaskFile(): string {
  const beside = fileURLToPath(new URL('./noiseFitTask.js', import.meta.url));
  if (existsSync(beside)) return pathToFileURL(beside).href;
  const repoRoot = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
  const compiled = path.join(repoRoot, 'dist', 'workers', 'noiseFitTask.js');
  if (existsSync(compiled)) return pathToFileURL(compiled).href;
  throw new Error(`the noise worker task is not compiled: neither ${beside} nor ${compiled} exists (run npm run build)`);
}

export class NoisePool {
  private readonly pool: Piscina<NoiseFitTask, NlfRecord>;
  readonly size: number;
  private readonly cpuShare: number;

  constructor(opts: NoisePoolOptions = {}) {
    this.size = Math.max(1, Math.floor(opts.size ?? defaultPoolSize()));
    this.cpuShare = opts.cpuShare ?? 1;
    this.pool = new Piscina<NoiseFitTask, NlfRecord>({
      filename: noiseTaskFile(),
      minThreads: 0,
      maxThreads: this.size,
      idleTimeout: 2000,
      niceIncrement: opts.niceIncrement ?? 19,
      concurrentTasksPerWorker: Math.max(1, Math.floor(opts.tasksPerWorker ?? 4)),
    });
  }

  /**
   * Fits one prepared sample in a worker. `sample.pairs` must own its whole buffer; it is moved
   * (after this call sample.pairs.buffer.byteLength is 0).
   */
  fitSample(sample: NoiseSample, fit: Omit<FitOptions, 'onProgress'> = {}): Promise<NlfRecord> {
    let pairs = sample.pairs;
    if (pairs.byteOffset !== 0 || pairs.byteLength !== pairs.buffer.byteLength) pairs = pairs.slice();
    const buffer = pairs.buffer as ArrayBuffer;
    const { pairs: _pairs, fallbackValues, ...rest } = sample;
    const task: NoiseFitTask = {
      sample: { ...rest, pairsBuffer: buffer, fallbackValues: fallbackValues ? Array.from(fallbackValues) : undefined },
      fit,
      cpuShare: this.cpuShare,
    };
    return this.pool.run(task, { transferList: [buffer] });
  }

  /** Samples each image here and fits them in the workers, all at once; resolves in input order. */
  fit(images: readonly NoiseImage[], opts: NoiseFitOptions = {}): Promise<NoiseReport[]> {
    const { maxSamples, seed, ...fit } = opts;
    const pending: Promise<NoiseReport>[] = [];
    for (const image of images) {
      let sample: NoiseSample;
      try {
        sample = sampleNoise(image, { maxSamples, seed });
      } catch (err) {
        pending.push(Promise.reject(err));
        continue;
      }
      pending.push(this.fitSample(sample, { ...fit, seed }));
    }
    return Promise.all(pending);
  }

  close(): Promise<void> {
    return this.pool.destroy();
  }
}

/**
 * Fits the NLF of every image in a pool of worker threads. The returned promise can be awaited
 * later: start it, train, then await it (the fits run at low priority beside training).
 */
export async function fitNoiseInWorkers(images: readonly NoiseImage[], opts: NoiseFitOptions & NoisePoolOptions & { pool?: NoisePool } = {}): Promise<NoiseReport[]> {
  const { size, niceIncrement, tasksPerWorker, cpuShare, pool: given, ...fit } = opts;
  const pool = given ?? new NoisePool({ size, niceIncrement, tasksPerWorker, cpuShare });
  try {
    return await pool.fit(images, fit);
  } finally {
    if (!given) await pool.close();
  }
}
