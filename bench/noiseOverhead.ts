/**
 * Does fitting noise-level functions in the worker pool slow training down? Trains the same small
 * 2D N2V problem twice (same seed): alone, then while NLF fits run back to back in the pool
 * (nice +19 worker threads by default). Reports training steps/s for both and their ratio (target >= 0.9).
 *
 *   node dist/bench/noiseOverhead.js [--steps 60] [--fits 40] [--pool-size N] [--nice 19] [--cpu-share 1] [--backend auto] [--threads N]
 */
import { mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { initBackend, type BackendChoice } from '../backend/select.js';
import { Rng } from '../core/rng.js';
import { trainModel, type TrainEvent } from '../pipeline/train.js';
import { NoisePool, defaultPoolSize } from '../workers/noisePool.js';
import { writeResult } from './common.js';

const { values } = parseArgs({
  options: {
    steps: { type: 'string', default: '60' },
    'pool-size': { type: 'string' },
    nice: { type: 'string', default: '19' },
    backend: { type: 'string', default: 'auto' },
    threads: { type: 'string' },
    fits: { type: 'string' },
    'cpu-share': { type: 'string', default: '1' },
  },
});
const steps = Number(values.steps);
const poolSize = values['pool-size'] ? Number(values['pool-size']) : defaultPoolSize();
const nice = Number(values.nice);

const backend = await initBackend({ backend: values.backend as BackendChoice, threads: values.threads ? Number(values.threads) : undefined });
const rng = new Rng(3);
const [Y, X] = [256, 256];
const image = new Float32Array(Y * X);
for (let y = 0; y < Y; y++) for (let x = 0; x < X; x++) image[y * X + x] = 100 + 50 * Math.sin(x / 9) * Math.cos(y / 13) + 10 * rng.normal();

/** Steps/s over the steps after the first 5 (warm-up: kernel compilation, first allocations). */
async function train(label: string): Promise<number> {
  const out = mkdtempSync(path.join(os.tmpdir(), `noise-overhead-${label}-`));
  const stepTimes: number[] = [];
  try {
    await trainModel({
      volumes: [{ name: 'synthetic', volume: { data: image, shape: [Y, X], sampleType: 'float32' } }],
      out,
      steps,
      batchSize: 8,
      patchShape: [64, 64],
      seed: 1,
      validateEvery: steps + 1,
      network: { depth: 2, filters: 16 },
      backend: { name: backend.name, threads: backend.threads },
      onEvent: (e: TrainEvent) => {
        if (e.type === 'step') stepTimes.push(performance.now());
      },
    });
  } finally {
    rmSync(out, { recursive: true, force: true });
  }
  const warm = 5;
  return (stepTimes.length - 1 - warm) / ((stepTimes[stepTimes.length - 1] - stepTimes[warm]) / 1000);
}

const alone = await train('alone');

// Fits queued up front (more than the training run can finish), handed to the workers several at a
// time, so the pool is busy for the whole run even while training holds the main thread.
const cpuShare = Number(values['cpu-share']);
const pool = new NoisePool({ size: poolSize, niceIncrement: nice, tasksPerWorker: 64, cpuShare });
const fitImage = (k: number) => {
  const r = new Rng(100 + k);
  const data = new Float32Array(512 * 512);
  for (let i = 0; i < data.length; i++) data[i] = 200 + (i % 512) / 4 + 15 * r.normal();
  return { name: `fit${k}`, data, shape: [512, 512] as const, sampleType: 'float32' as const };
};
const queued = Number(values.fits ?? 40);
const fitsStarted = performance.now();
let trainingEnded = Infinity;
let fitsDuringTraining = 0;
const fits = Array.from({ length: queued }, (_, k) =>
  pool.fit([fitImage(k)]).then(() => {
    if (performance.now() <= trainingEnded) fitsDuringTraining++;
  }),
);
const withFits = await train('with-fits');
trainingEnded = performance.now();
const trainingSeconds = (trainingEnded - fitsStarted) / 1000;
await Promise.all(fits);
const allFitsSeconds = (performance.now() - fitsStarted) / 1000;
await pool.close();
const fitsDone = fitsDuringTraining;

const ratio = withFits / alone;
const result = {
  backend: backend.name,
  backendThreads: backend.threads,
  poolSize,
  niceIncrement: nice,
  cpuShare,
  steps,
  stepsPerSecondAlone: +alone.toFixed(3),
  stepsPerSecondWithFits: +withFits.toFixed(3),
  ratio: +ratio.toFixed(3),
  fitsQueued: queued,
  fitsDuringTraining: fitsDone,
  trainingSecondsWithFits: +trainingSeconds.toFixed(2),
  allFitsSeconds: +allFitsSeconds.toFixed(2),
};
console.log(JSON.stringify(result));
console.log(`written ${await writeResult('noiseOverhead', result)}`);
