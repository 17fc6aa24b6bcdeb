/**
 * Speed of the reference U-Net (2D, depth 2, 32 filters, 3x3, batch norm, 64x64x1 patches,
 * batch 16, Adam; for training the PyTorch reference's widths, every conv its level's width, so that
 * the same network trains on each): training steps/s and megapixels/s with tfjs computing the
 * gradients and with the ONNX train engine (engines/onnxGradients.ts), in 2D and (unless --no-3d) 3D at
 * batch 4 of 16x64x64, and PyTorch's 2D training steps/s (bench/torch_infer.py --train-steps) as
 * ratios, peak RSS; inference of the model alone on
 * each engine (bench/engineSpeed.ts: ONNX Runtime CPU and tfjs, 2D 512x512 and 3D 32x128x128) and,
 * where Debian's python3-torch is installed, PyTorch CPU on the same networks in the same run
 * (bench/torch_infer.py), as ratios; each thread count in its own process (the wasm thread pool is
 * per process). `inferMpxPerS` is the default engine's (ONNX Runtime) 2D rate at the most threads.
 *
 *   npm run bench:speed                  # 1 and 2 threads (or up to the core count)
 *   npm run bench:speed -- --threads 2   # one setting
 *   npm run bench:speed -- --method noise2info   # the training rows train that method's loss and U-Net variant (a U-Net method)
 *   npm run bench:speed -- --prior learned   # ... with a Gaussian prior and a learned noise level (train --prior learned)
 *   npm run bench:speed -- --method laine19 --steps 5   # laine19's (dbsn's, divnoising's VAE) network at bench:methods' size instead of the U-Net
 *   npm run bench:speed -- --optimizer tfjs   # tf.train.adam instead of the fused Adam (A/B)
 *   npm run bench:speed -- --profile     # also: where a training step's time goes, per kernel
 *   npm run bench:speed -- --bn-helper off  # batch norm's JS loops without their helper thread (on by default)
 *   npm run bench:speed -- --no-train --no-3d   # inference only; 2D only
 *   npm run bench:speed -- --infer-runs 3 --infer-runs-3d 1   # timed runs per engine (after a warm-up)
 *   npm run bench:speed -- --no-torch-default-malloc   # PyTorch only with its memory reused (the ratios' reference)
 *   npm run bench:speed -- --tiny        # batch 2 of 32x32, inference on 64x64 (3D 8x32x32): tests the flow on a slow backend (no speed claim)
 * The last line printed is JSON with at least trainStepsPerS and inferMpxPerS.
 *
 * --profile wraps every kernel of the active backend during the timed steps and adds up, per
 * kernel name, the wall and process CPU time of the outermost calls (a kernel that calls others,
 * like dW calling Conv2D, owns their time). The wrapping costs a few microseconds per call, so the
 * steps/s of a profiled run are slightly low; compare kernels within one run.
 */
import { execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import os from 'node:os';
import { fileURLToPath } from 'node:url';
import { from, lastValueFrom, toArray } from 'rxjs';
import * as tf from '@tensorflow/tfjs-core';
import { initBackend, type BackendChoice } from '../backend/select.js';
import { Rng } from '../core/rng.js';
import { defaultUNetConfig } from '../models/unet.js';
import { buildNetwork, type NetworkConfig } from '../models/network.js';
import { createAdam } from '../models/optimizer.js';
import { defaultMaskOptions } from '../models/masking.js';
import { maskedLoss } from '../models/losses.js';
import { gaussianPriorLoss, learnedNoiseVariance } from '../models/bayes.js';
import { normalisedNoiseLikelihood } from '../noise/likelihood.js';
import type { Shape } from '../core/volume.js';
import type { Method, PatchPreparation } from '../methods/method.js';
import { getMethod } from '../methods/registry.js';
import { defaultGridSide } from '../methods/shared.js';
import { openTrainEngine } from '../pipeline/trainEngine.js';
import { trainSteps } from '../operators/trainSteps.js';
import { batchPatches, type TrainingBatch } from '../operators/batchPatches.js';
import type { MaskedPatch } from '../operators/maskN2V.js';
import { type BenchShapes, type EngineRates, SHAPE_2D, SHAPE_3D, measureEngines, measureTorch } from './engineSpeed.js';
import { setBatchNormHelperThread } from '../backend/kernels/batchNorm.js';
import { benchArgs, writeResult, runBenchmark } from './common.js';

/** 'fused': models/optimizer.ts (what training uses); 'tfjs': tf.train.adam, for comparison. */
type OptimizerChoice = 'fused' | 'tfjs';

interface KernelTime {
  kernel: string;
  wallMsPerStep: number;
  cpuMsPerStep: number;
  callsPerStep: number;
}

interface SpeedResult {
  /** Whose loss the training rows train (the reference U-Net either way). */
  method: string;
  backend: string;
  optimizer: OptimizerChoice;
  threads: number;
  trainStepsPerS: number | null;
  trainMpxPerS: number | null;
  /** The same steps with the ONNX train engine computing the gradients (tfjs' Adam applies them). */
  onnxTrainStepsPerS: number | null;
  /** 3D training steps/s on both (null: not measured, --no-3d or --no-train). */
  train3d: { batch: number; patch: number[]; tfjsStepsPerS: number | null; onnxStepsPerS: number | null };
  /** The default engine's (ONNX Runtime) inference rate, 2D 512x512. */
  inferMpxPerS: number;
  engines: EngineRates[];
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

/** The reference sizes, or --tiny's (training batch and patch; inference shapes of each engine). */
let BATCH = 16;
let PATCH = 64;
/** 3D training: batch and ZYX patch. */
let BATCH_3D = 4;
let PATCH_3D = [16, 64, 64];
let INFER_SHAPES: BenchShapes = { d2: SHAPE_2D, d3: SHAPE_3D };

interface InferenceRuns {
  runs2d: number;
  runs3d: number;
  with3d: boolean;
}

/**
 * `count` batches of unit-normal patches, each prepared as `method` prepares its training patches
 * and packed as training packs them (operators/batchPatches.ts).
 */
function methodBatches(method: Method, count: number, batch: number, patch: number[], rng: Rng): Promise<TrainingBatch[]> {
  const per = patch.reduce((a, b) => a * b, 1);
  const prep: PatchPreparation = { method, masking: defaultMaskOptions, grid: defaultGridSide, seed: 1 };
  const shape = patch as unknown as Shape;
  const patches = Array.from({ length: count * batch }, (_, i): MaskedPatch => {
    const step = Math.floor(i / batch);
    const data = Float32Array.from({ length: per }, () => rng.normal());
    return { step, shape, ...method.preparePatch({ step, shape, data, rng }, prep) };
  });
  return lastValueFrom(from(patches).pipe(batchPatches({ batchSize: batch }), toArray()));
}

/**
 * Training steps per second of a fresh `cfg` network trained with `method`'s loss on `batches` (3
 * untimed first), tfjs computing the gradients or (`onnxThreads`) the ONNX train engine; `profile`
 * wraps tfjs' kernels meanwhile.
 */
async function timeTraining(method: Method, prior: boolean, cfg: NetworkConfig, batches: TrainingBatch[], optimizerChoice: OptimizerChoice, onnxThreads: number | null, profile: boolean): Promise<{ stepsPerS: number; kernels?: KernelTime[] }> {
  const model = buildNetwork(cfg, 1);
  const optimizer = optimizerChoice === 'tfjs' ? tf.train.adam(4e-4) : createAdam(4e-4);
  // The trainer's losses on unit-normal patches: MSE, or a Gaussian prior's NLL with a learned noise
  // level; a likelihood method's noise model is Gaussian at the data's scale.
  const logSigma = prior ? tf.variable(tf.scalar(Math.log(0.5))) : null;
  const extraVariables = (): tf.Variable[] => (logSigma ? [logSigma] : []);
  const methodRun = method.training({
    seed: 1,
    grid: defaultGridSide,
    maskedLoss: logSigma ? gaussianPriorLoss(learnedNoiseVariance(logSigma)) : (p, t, m) => maskedLoss(p, t, m, 'mse'),
    // D-BSN's NLL reads a noise variance: the learned one, or a known one at the data's scale.
    noiseVariance: logSigma ? learnedNoiseVariance(logSigma) : (mu) => tf.fill(mu.shape, 0.25),
    ...(method.likelihood ? { noiseLikelihood: normalisedNoiseLikelihood({ spec: { kind: 'gaussian', sigma: 1 } }, { mode: 'meanstd', offset: 0, scale: 1 }) } : {}),
  });
  const gradients = onnxThreads === null ? undefined : (await openTrainEngine({ engine: 'onnx', model, methodName: method.name, methodRun, loss: prior ? 'prior' : 'mse', threads: onnxThreads, extraVariables })).engine;
  const options = { model, optimizer, loss: { batch: methodRun.batchLoss }, extraVariables, ...(gradients ? { gradients } : {}) };
  const warmup = 3;
  await lastValueFrom(from(batches.slice(0, warmup)).pipe(trainSteps(options), toArray()));
  const profiler = profile ? profileKernels(tf.getBackend()) : null;
  const t0 = performance.now();
  await lastValueFrom(from(batches.slice(warmup)).pipe(trainSteps(options), toArray()));
  const stepsPerS = (batches.length - warmup) / ((performance.now() - t0) / 1000);
  const kernels = profiler?.table(batches.length - warmup);
  profiler?.restore();
  await gradients?.dispose();
  model.dispose();
  optimizer.dispose();
  logSigma?.dispose();
  return { stepsPerS, ...(kernels ? { kernels } : {}) };
}

/**
 * The network a method trains: for a U-Net method the reference U-Net in its variant (N2V2's blur
 * pool, no top skip) with its output channels; laine19's, D-BSN's or DivNoising's VAE at bench:methods' size ('small').
 */
function methodNetwork(method: Method, dims: 2 | 3, prior: boolean): NetworkConfig {
  const own = method.network({ dims, size: method.networkKind === 'unet' ? 'paper' : 'small', overrides: {}, batchSize: BATCH, twoChannels: prior });
  if (own.kind !== undefined && own.kind !== 'unet') return own;
  const variant = { variant: own.variant, ...(own.blurPool !== undefined ? { blurPool: own.blurPool } : {}), ...(own.outputChannels !== undefined ? { outputChannels: own.outputChannels } : {}) };
  return { ...defaultUNetConfig(dims), widths: 'level', ...variant };
}

async function measure(method: Method, prior: boolean, backendChoice: BackendChoice, threads: number | undefined, steps: number, infer: InferenceRuns, optimizerChoice: OptimizerChoice, profile: boolean): Promise<SpeedResult> {
  const backend = await initBackend({ backend: backendChoice, threads });
  const rng = new Rng(3);
  const per = PATCH * PATCH;
  const round = (v: number | undefined): number | null => (v === undefined ? null : +v.toFixed(3));
  let tfjs2d: { stepsPerS: number; kernels?: KernelTime[] } | undefined;
  let onnx2d: number | undefined;
  let tfjs3d: number | undefined;
  let onnx3d: number | undefined;
  if (steps > 0) {
    const cfg2d = methodNetwork(method, 2, prior);
    const batches2d = await methodBatches(method, 3 + steps, BATCH, [PATCH, PATCH], rng);
    tfjs2d = await timeTraining(method, prior, cfg2d, batches2d, optimizerChoice, null, profile);
    onnx2d = (await timeTraining(method, prior, cfg2d, batches2d, optimizerChoice, backend.threads, false)).stepsPerS;
    if (infer.with3d) {
      // 3D: batch 4 of PATCH_3D, a quarter of the 2D steps (at least 2).
      const cfg3d = methodNetwork(method, 3, prior);
      const batches3d = await methodBatches(method, 3 + Math.max(2, Math.round(steps / 4)), BATCH_3D, PATCH_3D, rng);
      tfjs3d = (await timeTraining(method, prior, cfg3d, batches3d, optimizerChoice, null, false)).stepsPerS;
      onnx3d = (await timeTraining(method, prior, cfg3d, batches3d, optimizerChoice, backend.threads, false)).stepsPerS;
    }
  }
  const engines = await measureEngines(backend.threads, infer.runs2d, infer.runs3d, infer.with3d, INFER_SHAPES);
  return {
    method: prior ? `${method.name} --prior learned` : method.name,
    backend: backend.name,
    optimizer: optimizerChoice,
    threads: backend.threads,
    trainStepsPerS: round(tfjs2d?.stepsPerS),
    trainMpxPerS: tfjs2d === undefined ? null : +((tfjs2d.stepsPerS * BATCH * per) / 1e6).toFixed(3),
    onnxTrainStepsPerS: round(onnx2d),
    train3d: { batch: BATCH_3D, patch: PATCH_3D, tfjsStepsPerS: round(tfjs3d), onnxStepsPerS: round(onnx3d) },
    inferMpxPerS: engines.find((e) => e.engine === 'onnx')!.mpx2d,
    engines,
    peakRssMiB: Math.round(process.resourceUsage().maxRSS / 1024),
    trainSteps: steps,
    inferRuns: infer.runs2d,
    ...(tfjs2d?.kernels === undefined ? {} : { profile: tfjs2d.kernels }),
  };
}

async function main(): Promise<void> {
  const args = benchArgs(process.argv.slice(2));
  const backend = (args.get('backend') ?? 'auto') as BackendChoice;
  const steps = args.has('no-train') ? 0 : Number(args.get('steps') ?? 20);
  const infer: InferenceRuns = { runs2d: Number(args.get('infer-runs') ?? 3), runs3d: Number(args.get('infer-runs-3d') ?? 1), with3d: !args.has('no-3d') };
  const optimizerChoice = (args.get('optimizer') ?? 'fused') as OptimizerChoice;
  if (optimizerChoice !== 'fused' && optimizerChoice !== 'tfjs') throw new Error(`--optimizer must be fused or tfjs, got ${optimizerChoice}`);
  const bnHelper = args.get('bn-helper') ?? 'on';
  if (bnHelper !== 'on' && bnHelper !== 'off') throw new Error(`--bn-helper must be on or off, got ${bnHelper}`);
  setBatchNormHelperThread(bnHelper === 'on');
  if (args.has('tiny')) [BATCH, PATCH, BATCH_3D, PATCH_3D, INFER_SHAPES] = [2, 32, 1, [8, 16, 16], { d2: [64, 64], d3: [8, 32, 32] }];
  const method = getMethod(args.get('method') ?? 'n2v');
  const priorArg = args.get('prior') ?? 'none';
  if (priorArg !== 'none' && priorArg !== 'learned') throw new Error(`--prior must be none or learned, got ${priorArg}`);
  const prior = priorArg === 'learned';
  if (args.has('child')) {
    const measured = await measure(method, prior, backend, args.has('threads') ? Number(args.get('threads')) : undefined, steps, infer, optimizerChoice, args.has('profile'));
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
  const torch: EngineRates[] = [];
  const loads: string[] = [];
  for (const t of threadCounts) {
    loads.push(readLoad());
    const childArgs = ['--child', '--method', method.name, '--prior', priorArg, '--threads', String(t), '--backend', backend, '--steps', String(steps), '--infer-runs', String(infer.runs2d), '--infer-runs-3d', String(infer.runs3d)];
    if (!infer.with3d) childArgs.push('--no-3d');
    if (steps === 0) childArgs.push('--no-train');
    const out = execFileSync(process.execPath, [fileURLToPath(import.meta.url), ...childArgs, '--optimizer', optimizerChoice, '--bn-helper', bnHelper, ...(args.has('profile') ? ['--profile'] : []), ...(args.has('tiny') ? ['--tiny'] : [])], {
      encoding: 'utf8',
      stdio: ['ignore', 'pipe', 'inherit'],
      maxBuffer: 1 << 24,
    });
    const r = JSON.parse(out.trim().split('\n').pop()!) as SpeedResult;
    const train3d = r.train3d.tfjsStepsPerS === null ? '' : `; 3D batch ${r.train3d.batch} of ${r.train3d.patch.join('x')}: ${r.train3d.tfjsStepsPerS} steps/s, onnx train engine ${r.train3d.onnxStepsPerS}`;
    const train = r.trainStepsPerS === null ? 'no training' : `train ${r.trainStepsPerS} steps/s (${r.trainMpxPerS} Mpx/s), with the onnx train engine ${r.onnxTrainStepsPerS} steps/s${train3d}`;
    console.log(`${r.method}, ${r.backend} ${r.threads} thread(s), ${r.optimizer} Adam${r.batchNormHelper ? ', batch-norm helper thread' : ''}: ${train}, peak RSS ${r.peakRssMiB} MiB`);
    runs.push(r);
    // PyTorch right after, same thread count: same-run ratios are what mean anything on a shared machine.
    // --tiny measures nothing worth a ratio (and torch_infer.py knows only the reference shapes).
    // PyTorch with its activations' memory reused (the fair reference, see TORCH_MALLOC_REUSE) and,
    // for the record, with glibc's default allocator settings.
    // PyTorch's training step is N2V's (bench/torch_infer.py): no ratio for another method's.
    const pt = args.has('tiny') ? null : measureTorch(t, infer.runs2d, infer.runs3d, infer.with3d, 'reuse', method.name === 'n2v' && !prior ? steps : 0);
    const ptDefault = pt && !args.has('no-torch-default-malloc') ? measureTorch(t, infer.runs2d, infer.runs3d, infer.with3d, 'default') : null;
    if (pt) torch.push(pt);
    if (ptDefault) torch.push(ptDefault);
    for (const e of [...r.engines, ...(pt ? [pt] : []), ...(ptDefault ? [ptDefault] : [])]) {
      console.log(`  infer ${e.engine.padEnd(20)} ${t} thread(s): 2D ${e.mpx2d} Mpx/s${e.mvox3d === null ? '' : `, 3D ${e.mvox3d} Mvoxel/s`}`);
    }
  }
  if (torch.length === 0) console.log('PyTorch not measured: /usr/bin/python3 cannot import torch (apt-get install python3-torch)');
  const best = runs[runs.length - 1];
  const ratio = (a: number | null, b: number | null | undefined): number | null => (a === null || !b ? null : +(a / b).toFixed(3));
  const ratios = runs.map((r) => {
    const rate = (name: string) => [...r.engines, ...torch].find((e) => e.engine === name && e.threads === r.threads);
    const [onnx, tfjs, pt, ptDefault] = [rate('onnx')!, rate('tfjs')!, rate('torch'), rate('torch-default-malloc')];
    return {
      threads: r.threads,
      onnxVsTfjs: { d2: ratio(onnx.mpx2d, tfjs.mpx2d), d3: ratio(onnx.mvox3d, tfjs.mvox3d) },
      ...(pt ? { onnxVsTorch: { d2: ratio(onnx.mpx2d, pt.mpx2d), d3: ratio(onnx.mvox3d, pt.mvox3d) }, tfjsVsTorch: { d2: ratio(tfjs.mpx2d, pt.mpx2d), d3: ratio(tfjs.mvox3d, pt.mvox3d) } } : {}),
      ...(ptDefault ? { onnxVsTorchDefaultMalloc: { d2: ratio(onnx.mpx2d, ptDefault.mpx2d), d3: ratio(onnx.mvox3d, ptDefault.mvox3d) } } : {}),
      // Training steps/s: the onnx train engine, tfjs (its backend's autodiff) and PyTorch.
      train: {
        onnxVsTfjs: ratio(r.onnxTrainStepsPerS, r.trainStepsPerS),
        onnxVsTfjs3d: ratio(r.train3d.onnxStepsPerS, r.train3d.tfjsStepsPerS),
        ...(pt?.trainStepsPerS ? { onnxVsTorch: ratio(r.onnxTrainStepsPerS, pt.trainStepsPerS), tfjsVsTorch: ratio(r.trainStepsPerS, pt.trainStepsPerS) } : {}),
      },
    };
  });
  for (const q of ratios) console.log(`ratios ${q.threads} thread(s): ${JSON.stringify(q)}`);
  loads.push(readLoad());
  const summary = {
    ...best,
    runs,
    torch,
    ratios,
    defaultEngine: 'onnx',
    // /proc/loadavg before each thread count's run and at the end: the machine is shared.
    load: loads,
  };
  if (args.has('tiny')) {
    // Toy sizes test the flow; they are no result to keep.
    console.log(JSON.stringify(summary));
    return;
  }
  // n2v's runs keep the name the earlier results have; another method's get their own.
  const file = await writeResult(method.name === 'n2v' && !prior ? 'speed' : `speed-${method.name}${prior ? '-prior' : ''}`, summary);
  console.log(`written ${file}`);
  console.log(JSON.stringify(summary));
}

function readLoad(): string {
  try {
    return readFileSync('/proc/loadavg', 'utf8').trim();
  } catch {
    return 'unknown';
  }
}

runBenchmark(main);
