/**
 * Speed of the reference U-Net (2D, depth 2, 32 filters, 3x3, batch norm, 64x64x1 patches,
 * batch 16, Adam): training steps/s and megapixels/s, inference megapixels/s on a 512x512 image,
 * peak RSS; each thread count in its own process (the wasm thread pool is per process).
 *
 *   npm run bench:speed                  # 1 and 2 threads (or up to the core count)
 *   npm run bench:speed -- --threads 2   # one setting
 *   npm run bench:speed -- --optimizer tfjs   # tf.train.adam instead of the fused Adam (A/B)
 *   npm run bench:speed -- --profile     # also: where a training step's time goes, per kernel
 *   npm run bench:speed -- --bn-helper off  # batch norm's JS loops without their helper thread (on by default)
 *   npm run bench:speed -- --tiny        # batch 2 of 32x32, a 64x64 image: tests the flow on a slow backend (no speed claim)
 * The last line printed is JSON with at least trainStepsPerS and inferMpxPerS.
 *
 * --profile wraps every kernel of the active backend during the timed steps and adds up, per
 * kernel name, the wall and process CPU time of the outermost calls (a kernel that calls others,
 * like dW calling Conv2D, owns their time). The wrapping costs a few microseconds per call, so the
 * steps/s of a profiled run are slightly low; compare kernels within one run.
 */
import { execFileSync } from 'node:child_process';
import os from 'node:os';
import { fileURLToPath } from 'node:url';
import { from, lastValueFrom, toArray } from 'rxjs';
import * as tf from '@tensorflow/tfjs-core';
import { initBackend, type BackendChoice } from '../backend/select.js';
import { Rng } from '../core/rng.js';
import { buildUNet, defaultUNetConfig, unetGeometry } from '../models/unet.js';
import { createAdam } from '../models/optimizer.js';
import { defaultMaskOptions, maskPatch } from '../models/masking.js';
import { trainSteps } from '../operators/trainSteps.js';
import type { TrainingBatch } from '../operators/batchPatches.js';
import { predictVolume } from '../pipeline/predict.js';
import { setBatchNormHelperThread } from '../backend/kernels/batchNorm.js';
import { benchArgs, writeResult } from './common.js';

/** 'fused': models/optimizer.ts (what training uses); 'tfjs': tf.train.adam, for comparison. */
type OptimizerChoice = 'fused' | 'tfjs';

interface KernelTime {
  kernel: string;
  wallMsPerStep: number;
  cpuMsPerStep: number;
  callsPerStep: number;
}

interface SpeedResult {
  backend: string;
  optimizer: OptimizerChoice;
  threads: number;
  trainStepsPerS: number;
  trainMpxPerS: number;
  inferMpxPerS: number;
  peakRssMiB: number;
  trainSteps: number;
  inferRuns: number;
  profile?: KernelTime[];
  /** Whether batch norm's loops shared rows with the helper thread (--bn-helper). */
  batchNormHelper?: boolean;
}

/**
 * Wraps every kernel registered for `backendName` to time its outermost calls; returns the table
 * so far and a function that puts the original kernels back.
 */
function profileKernels(backendName: string): { table: (steps: number) => KernelTime[]; restore: () => void } {
  const totals = new Map<string, { wall: number; cpu: number; calls: number }>();
  const originals = tf.getKernelsForBackend(backendName);
  let depth = 0;
  for (const config of originals) {
    const inner = config.kernelFunc;
    const timed: tf.KernelFunc = (args) => {
      if (depth > 0) return inner(args);
      depth++;
      const wall0 = performance.now();
      const cpu0 = process.cpuUsage();
      try {
        return inner(args);
      } finally {
        depth--;
        const cpu = process.cpuUsage(cpu0);
        const entry = totals.get(config.kernelName) ?? { wall: 0, cpu: 0, calls: 0 };
        entry.wall += performance.now() - wall0;
        entry.cpu += (cpu.user + cpu.system) / 1000;
        entry.calls++;
        totals.set(config.kernelName, entry);
      }
    };
    tf.unregisterKernel(config.kernelName, backendName);
    tf.registerKernel({ ...config, kernelFunc: timed });
  }
  return {
    table: (steps) =>
      [...totals]
        .map(([kernel, t]) => ({ kernel, wallMsPerStep: +(t.wall / steps).toFixed(1), cpuMsPerStep: +(t.cpu / steps).toFixed(1), callsPerStep: +(t.calls / steps).toFixed(1) }))
        .sort((a, b) => b.wallMsPerStep - a.wallMsPerStep),
    restore: () => {
      for (const config of originals) {
        tf.unregisterKernel(config.kernelName, backendName);
        tf.registerKernel(config);
      }
    },
  };
}

/** The reference sizes, or --tiny's. */
let BATCH = 16;
let PATCH = 64;
let IMAGE = 512;

async function measure(backendChoice: BackendChoice, threads: number | undefined, steps: number, inferRuns: number, optimizerChoice: OptimizerChoice, profile: boolean): Promise<SpeedResult> {
  const backend = await initBackend({ backend: backendChoice, threads });
  const cfg = defaultUNetConfig(2);
  const model = buildUNet(cfg, 1);
  const optimizer = optimizerChoice === 'tfjs' ? tf.train.adam(4e-4) : createAdam(4e-4);
  const rng = new Rng(3);
  const per = PATCH * PATCH;
  const makeBatch = (step: number): TrainingBatch => {
    const inputs = new Float32Array(BATCH * per);
    const targets = new Float32Array(BATCH * per);
    const masks = new Float32Array(BATCH * per);
    for (let b = 0; b < BATCH; b++) {
      const patch = Float32Array.from({ length: per }, () => rng.normal());
      const m = maskPatch(patch, [PATCH, PATCH], defaultMaskOptions, rng);
      inputs.set(m.input, b * per);
      targets.set(patch, b * per);
      masks.set(m.mask, b * per);
    }
    return { step, shape: [BATCH, PATCH, PATCH, 1], inputs, targets, masks };
  };
  const warmup = 3;
  const batches = Array.from({ length: warmup + steps }, (_, i) => makeBatch(i));
  await lastValueFrom(from(batches.slice(0, warmup)).pipe(trainSteps({ model, optimizer, loss: 'mse' }), toArray()));
  const profiler = profile ? profileKernels(tf.getBackend()) : null;
  const t0 = performance.now();
  await lastValueFrom(from(batches.slice(warmup)).pipe(trainSteps({ model, optimizer, loss: 'mse' }), toArray()));
  const trainSeconds = (performance.now() - t0) / 1000;
  const kernelTimes = profiler?.table(steps);
  profiler?.restore();

  const geometry = unetGeometry(cfg);
  const image = Float32Array.from({ length: IMAGE * IMAGE }, () => rng.normal());
  const predictOpts = { sizeMultiple: geometry.sizeMultiple, receptiveRadius: geometry.receptiveRadius };
  await predictVolume(model, image, [IMAGE, IMAGE], predictOpts);
  const t1 = performance.now();
  for (let i = 0; i < inferRuns; i++) await predictVolume(model, image, [IMAGE, IMAGE], predictOpts);
  const inferSeconds = (performance.now() - t1) / 1000;
  model.dispose();
  optimizer.dispose();
  const stepsPerS = steps / trainSeconds;
  return {
    backend: backend.name,
    optimizer: optimizerChoice,
    threads: backend.threads,
    trainStepsPerS: +stepsPerS.toFixed(3),
    trainMpxPerS: +((stepsPerS * BATCH * per) / 1e6).toFixed(3),
    inferMpxPerS: +((inferRuns * IMAGE * IMAGE) / 1e6 / inferSeconds).toFixed(3),
    peakRssMiB: Math.round(process.resourceUsage().maxRSS / 1024),
    trainSteps: steps,
    inferRuns,
    ...(kernelTimes === undefined ? {} : { profile: kernelTimes }),
  };
}

async function main(): Promise<void> {
  const args = benchArgs(process.argv.slice(2));
  const backend = (args.get('backend') ?? 'auto') as BackendChoice;
  const steps = Number(args.get('steps') ?? 20);
  const inferRuns = Number(args.get('infer-runs') ?? 3);
  const optimizerChoice = (args.get('optimizer') ?? 'fused') as OptimizerChoice;
  if (optimizerChoice !== 'fused' && optimizerChoice !== 'tfjs') throw new Error(`--optimizer must be fused or tfjs, got ${optimizerChoice}`);
  const bnHelper = args.get('bn-helper') ?? 'on';
  if (bnHelper !== 'on' && bnHelper !== 'off') throw new Error(`--bn-helper must be on or off, got ${bnHelper}`);
  setBatchNormHelperThread(bnHelper === 'on');
  if (args.has('tiny')) [BATCH, PATCH, IMAGE] = [2, 32, 64];
  if (args.has('child')) {
    const measured = await measure(backend, args.has('threads') ? Number(args.get('threads')) : undefined, steps, inferRuns, optimizerChoice, args.has('profile'));
    const r: SpeedResult = { ...measured, batchNormHelper: bnHelper === 'on' };
    if (r.profile !== undefined) {
      process.stderr.write(`per training step, ${r.threads} thread(s) (outermost kernel calls):\n`);
      for (const k of r.profile) process.stderr.write(`  ${k.kernel.padEnd(30)} ${String(k.wallMsPerStep).padStart(8)} ms wall ${String(k.cpuMsPerStep).padStart(8)} ms CPU ${String(k.callsPerStep).padStart(6)} calls\n`);
    }
    console.log(JSON.stringify(r));
    return;
  }
  const threadCounts = args.has('threads') ? [Number(args.get('threads'))] : [...new Set([1, Math.min(2, os.availableParallelism())])];
  const runs: SpeedResult[] = [];
  for (const t of threadCounts) {
    const out = execFileSync(process.execPath, [fileURLToPath(import.meta.url), '--child', '--threads', String(t), '--backend', backend, '--steps', String(steps), '--infer-runs', String(inferRuns), '--optimizer', optimizerChoice, '--bn-helper', bnHelper, ...(args.has('profile') ? ['--profile'] : []), ...(args.has('tiny') ? ['--tiny'] : [])], {
      encoding: 'utf8',
      stdio: ['ignore', 'pipe', 'inherit'],
      maxBuffer: 1 << 24,
    });
    const r = JSON.parse(out.trim().split('\n').pop()!) as SpeedResult;
    console.log(`${r.backend} ${r.threads} thread(s), ${r.optimizer} Adam${r.batchNormHelper ? ', batch-norm helper thread' : ''}: train ${r.trainStepsPerS} steps/s (${r.trainMpxPerS} Mpx/s), infer ${r.inferMpxPerS} Mpx/s (512x512), peak RSS ${r.peakRssMiB} MiB`);
    runs.push(r);
  }
  const best = runs[runs.length - 1];
  // Reference: PyTorch 1.13 CPU on this machine, 2 threads (../shared/docs/tfjs-wasm-notes.md).
  const pytorch = { trainStepsPerS: 3.05, inferMpxPerS: 0.397 };
  const summary = {
    ...best,
    runs,
    vsPyTorch2Threads: {
      train: +(best.trainStepsPerS / pytorch.trainStepsPerS).toFixed(3),
      infer: +(best.inferMpxPerS / pytorch.inferMpxPerS).toFixed(3),
    },
  };
  if (args.has('tiny')) {
    // Toy sizes test the flow; they are no result to keep.
    console.log(JSON.stringify(summary));
    return;
  }
  const file = await writeResult('speed', summary);
  console.log(`written ${file}`);
  console.log(JSON.stringify(summary));
}

main().then(
  () => process.exit(0),
  (err) => {
    console.error(err);
    process.exit(1);
  },
);
