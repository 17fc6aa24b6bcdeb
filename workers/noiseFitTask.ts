/**
 * piscina task: fits one noise-level function. The sample's [intensity, residual, texture] values
 * arrive as a transferred ArrayBuffer (moved, not copied); everything else is small.
 */
import { fitNlf, type FitOptions, type NlfRecord } from '../noise/nlf.js';
import type { NoiseSample } from '../noise/sample.js';

/** The message a worker receives: a NoiseSample whose `pairs` travel as their buffer. */
export interface NoiseFitTask {
  sample: Omit<NoiseSample, 'pairs' | 'fallbackValues'> & { pairsBuffer: ArrayBuffer; fallbackValues?: number[] };
  fit: Omit<FitOptions, 'onProgress'>;
  /** Fraction of one core the fit may use (0..1]; below 1 it sleeps between chunks of iterations. */
  cpuShare?: number;
}

const sleeper = new Int32Array(new SharedArrayBuffer(4));

export default function fitNoiseTask(task: NoiseFitTask): NlfRecord {
  const { pairsBuffer, fallbackValues, ...rest } = task.sample;
  const sample: NoiseSample = {
    ...rest,
    pairs: new Float32Array(pairsBuffer),
    fallbackValues: fallbackValues ? Float32Array.from(fallbackValues) : undefined,
  };
  const share = task.cpuShare ?? 1;
  if (!(share > 0 && share < 1)) return fitNlf(sample, task.fit);
  let chunkStart = performance.now();
  const onProgress = (): void => {
    const worked = performance.now() - chunkStart;
    Atomics.wait(sleeper, 0, 0, (worked * (1 - share)) / share);
    chunkStart = performance.now();
  };
  return fitNlf(sample, { ...task.fit, onProgress });
}
