/**
 * The GPU check bench/gpu.sh runs (never a test dependency): names the webgpu adapter, checks that
 * it computes a convolution and its gradients as the cpu backend does, times bench:speed's training
 * and inference on webgpu (and on wasm with every core, the CPU baseline on the same machine),
 * reports whether ONNX Runtime's CUDA provider could run, and writes everything as JSON to --out.
 *
 *   node dist/bench/gpuCheck.js --out DIR [--steps N] [--infer-runs N] [--allow-software] [--tiny]
 *
 * --allow-software accepts a software adapter (llvmpipe: for testing this flow on a CPU-only
 * machine); without it the check fails when Dawn finds no hardware adapter. --tiny runs
 * bench:speed at its --tiny sizes (the flow on a slow adapter; no speed claim).
 */
import { execFileSync } from 'node:child_process';
import { type Dirent, existsSync, promises as fs, readdirSync, readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import * as tf from '@tensorflow/tfjs-core';
// Importing tfjs-layers registers tfjs-core's gradients (as in the app); this check uses tf.grads directly.
import '@tensorflow/tfjs-layers';
import { initBackend } from '../backend/select.js';
import { Rng } from '../core/rng.js';
import { PACKAGE_ROOT } from '../core/version.js';
import { benchArgs, gitCommit, machineInfo } from './common.js';

interface Step {
  name: string;
  ok: boolean;
  seconds: number;
  result?: unknown;
  error?: string;
}

function commit(): string {
  const fromGit = existsSync(path.join(PACKAGE_ROOT, '.git')) ? gitCommit() : 'unknown';
  if (fromGit !== 'unknown') return fromGit;
  // A machine without git: the commit the kit was prepared from (bench/gpu.sh --prepare).
  const recorded = path.join(PACKAGE_ROOT, 'bench', '.gpu-kit', 'commit');
  return existsSync(recorded) ? readFileSync(recorded, 'utf8').trim() : 'unknown';
}

function nvidiaSmi(): string | null {
  try {
    return execFileSync('nvidia-smi', ['--query-gpu=name,driver_version,memory.total', '--format=csv,noheader'], { encoding: 'utf8', timeout: 20_000 }).trim();
  } catch {
    return null;
  }
}

/**
 * conv2d and conv3d, forward and both gradients, on the active backend, read asynchronously (conv3d
 * runs as 2D convolutions on webgpu: backend/kernels/webgpuConv3d.ts).
 */
async function convCheckValues(): Promise<Float32Array[]> {
  const rng = new Rng(7);
  const make = (shape: number[]): tf.Tensor => tf.tensor(Float32Array.from({ length: shape.reduce((a, b) => a * b, 1) }, () => rng.normal()), shape);
  const values: Float32Array[] = [];
  const cases: { x: number[]; w: number[]; conv: (a: tf.Tensor, b: tf.Tensor) => tf.Tensor }[] = [
    { x: [2, 33, 31, 8], w: [3, 3, 8, 16], conv: (a, b) => tf.conv2d(a as tf.Tensor4D, b as tf.Tensor4D, 1, 'same') },
    { x: [2, 9, 17, 15, 4], w: [3, 3, 3, 4, 8], conv: (a, b) => tf.conv3d(a as tf.Tensor5D, b as tf.Tensor5D, 1, 'same') },
  ];
  for (const { x: xShape, w: wShape, conv } of cases) {
    const x = make(xShape);
    const w = make(wShape);
    const y = conv(x, w);
    const [dx, dw] = tf.grads((a: tf.Tensor, b: tf.Tensor): tf.Tensor => tf.sum(tf.square(conv(a, b))))([x, w]);
    values.push(...(await Promise.all([y, dx, dw].map(async (t) => (await t.data()) as Float32Array))));
    tf.dispose([x, w, y, dx, dw]);
  }
  return values;
}

async function convCheck(): Promise<{ maxRelativeDiff: number }> {
  const backend = tf.getBackend();
  const onDevice = await convCheckValues();
  await tf.setBackend('cpu');
  // The cpu backend's "install tfjs-node" banner on first use: not this check's business.
  const cpuBackend = tf.backend() as unknown as { firstUse?: unknown };
  if (typeof cpuBackend.firstUse === 'boolean') cpuBackend.firstUse = false;
  const onCpu = await convCheckValues();
  await tf.setBackend(backend);
  let worst = 0;
  onDevice.forEach((values, k) => {
    let diff = 0;
    let scale = 1e-12;
    for (let i = 0; i < values.length; i++) {
      diff = Math.max(diff, Math.abs(values[i] - onCpu[k][i]));
      scale = Math.max(scale, Math.abs(onCpu[k][i]));
    }
    worst = Math.max(worst, diff / scale);
  });
  if (!(worst < 1e-3)) throw new Error(`conv2d / conv3d on the device differ from cpu by ${worst} (relative)`);
  return { maxRelativeDiff: worst };
}

/** bench:speed's measurement in a child process (one backend per process). */
function speed(backend: string, threads: number, steps: number, inferRuns: number, tiny: boolean): unknown {
  const script = path.join(path.dirname(fileURLToPath(import.meta.url)), 'speed.js');
  const out = execFileSync(process.execPath, [script, '--child', '--backend', backend, '--threads', String(threads), '--steps', String(steps), '--infer-runs', String(inferRuns), ...(tiny ? ['--tiny'] : [])], {
    encoding: 'utf8',
    stdio: ['ignore', 'pipe', 'inherit'],
    maxBuffer: 1 << 24,
    timeout: 240_000,
  });
  return JSON.parse(out.trim().split('\n').pop()!);
}

/** Whether ONNX Runtime for Node and its CUDA provider library are here; runs nothing yet. */
function onnxCuda(): { status: 'available' | 'skipped'; reason: string } {
  let packageJson: string;
  try {
    packageJson = createRequire(import.meta.url).resolve('onnxruntime-node/package.json');
  } catch {
    return { status: 'skipped', reason: 'onnxruntime-node is not installed' };
  }
  const binDir = path.join(path.dirname(packageJson), 'bin');
  const found = findFile(binDir, 'libonnxruntime_providers_cuda.so', 4);
  if (found === null) return { status: 'skipped', reason: `no libonnxruntime_providers_cuda.so under ${binDir} (its CUDA build is a separate download)` };
  return { status: 'available', reason: found };
}

function findFile(dir: string, name: string, depth: number): string | null {
  if (depth < 0) return null;
  let entries: Dirent[];
  try {
    entries = readdirSync(dir, { withFileTypes: true });
  } catch {
    return null;
  }
  for (const entry of entries) {
    const full = path.join(dir, entry.name);
    if (entry.name === name) return full;
    const below = entry.isDirectory() ? findFile(full, name, depth - 1) : null;
    if (below !== null) return below;
  }
  return null;
}

async function timed(name: string, steps: Step[], work: () => unknown): Promise<void> {
  const t0 = performance.now();
  try {
    const result = await work();
    steps.push({ name, ok: true, seconds: +((performance.now() - t0) / 1000).toFixed(1), result });
  } catch (error) {
    steps.push({ name, ok: false, seconds: +((performance.now() - t0) / 1000).toFixed(1), error: error instanceof Error ? error.message : String(error) });
  }
  const last = steps[steps.length - 1];
  process.stderr.write(`gpu-check: ${name}: ${last.ok ? 'ok' : `FAILED: ${last.error}`} (${last.seconds} s)${last.ok && last.result !== undefined ? ` ${JSON.stringify(last.result)}` : ''}\n`);
}

async function main(): Promise<void> {
  const args = benchArgs(process.argv.slice(2));
  const out = args.get('out');
  if (out === undefined) throw new Error('--out DIR is required');
  const steps = Number(args.get('steps') ?? 20);
  const inferRuns = Number(args.get('infer-runs') ?? 3);
  const allowSoftware = args.has('allow-software');
  const tiny = args.has('tiny');
  const started = new Date().toISOString();
  const report: Record<string, unknown> = {
    benchmark: 'gpu-check',
    date: started,
    command: ['node', ...process.argv.slice(1).map((a) => path.relative(PACKAGE_ROOT, a) || a)].join(' '),
    commit: commit(),
    ...(tiny ? { note: '--tiny: a flow test at toy sizes, not a speed measurement' } : {}),
    machine: { ...machineInfo(), nvidiaSmi: nvidiaSmi() },
  };
  const info = await initBackend({ backend: 'webgpu' });
  process.stderr.write(`gpu-check: adapter: ${info.detail}\n`);
  report['adapter'] = { detail: info.detail, hardware: info.gpu, maxTensorBytes: info.maxTensorBytes };
  const results: Step[] = [];
  if (!info.gpu && !allowSoftware) {
    results.push({ name: 'adapter', ok: false, seconds: 0, error: 'Dawn found only a software adapter (no Vulkan driver for the GPU?)' });
  } else {
    await timed('conv2d, conv3d and their gradients vs cpu', results, convCheck);
    await timed('bench:speed on webgpu', results, () => speed('webgpu', 1, steps, inferRuns, tiny));
    await timed('bench:speed on wasm, all cores (the CPU baseline here)', results, () => speed('wasm', Math.min(8, machineInfo()['logicalCores'] as number), Math.max(2, Math.round(steps / 4)), 1, tiny));
  }
  report['onnxRuntimeCuda'] = onnxCuda();
  report['steps'] = results;
  report['ok'] = results.every((s) => s.ok);
  await fs.mkdir(out, { recursive: true });
  const file = path.join(out, 'gpu-check.json');
  await fs.writeFile(file, JSON.stringify(report, null, 2) + '\n');
  process.stderr.write(`gpu-check: written ${file}\n`);
  process.exitCode = report['ok'] === true ? 0 : 1;
}

main().then(
  () => process.exit(process.exitCode ?? 0),
  (error: unknown) => {
    process.stderr.write(`gpu-check: ${error instanceof Error ? (error.stack ?? error.message) : String(error)}\n`);
    process.exit(1);
  },
);
