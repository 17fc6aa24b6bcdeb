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
}

export default function fitNoiseTask(task: NoiseFitTask): NlfRecord {
  const { pairsBuffer, fallbackValues, ...rest } = task.sample;
  const sample: NoiseSample = {
    ...rest,
    pairs: new Float32Array(pairsBuffer),
    fallbackValues: fallbackValues ? Float32Array.from(fallbackValues) : undefined,
  };
  return fitNlf(sample, task.fit);
}
