/**
 * Inference speed of the reference U-Net (depth 2, 32 filters, batch norm) on each engine, the
 * model alone (one engine.predict on the whole image, as PyTorch is timed by bench/torch_infer.py):
 * 2D 512x512 and 3D 32x128x128, in Mpx/s (Mvoxel/s). Called by bench/speed.ts in each thread
 * count's child process, where the tfjs backend already runs with that many threads.
 */
import { execFileSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import path from 'node:path';
import { Rng } from '../core/rng.js';
import { PACKAGE_ROOT } from '../core/version.js';
import type { InferenceEngine } from '../engines/engine.js';
import { openOnnxEngine } from '../engines/onnxRuntime.js';
import { tfjsEngine } from '../engines/tfjs.js';
import type { ModelManifest } from '../models/io.js';
import { exportOnnx } from '../models/onnx/export.js';
import { buildUNet, defaultUNetConfig, type UNetConfig } from '../models/unet.js';

export const SHAPE_2D = [512, 512];
export const SHAPE_3D = [32, 128, 128];

/** The 2D and 3D input shapes an inference rate is measured on (ZYX; bench:speed --tiny passes toy ones). */
export interface BenchShapes {
  d2: number[];
  d3: number[];
}

export interface EngineRates {
  /** torch: PyTorch with its memory reused (TORCH_MALLOC_REUSE); torch-default-malloc: with glibc's defaults. */
  engine: 'onnx' | 'tfjs' | 'torch' | 'torch-default-malloc';
  threads: number;
  /** 2D 512x512, megapixels per second. */
  mpx2d: number;
  /** 3D 32x128x128, megavoxels per second (null: not measured). */
  mvox3d: number | null;
  /** PyTorch: training steps per second of the 2D network at batch 16 of 64x64 (absent: not measured). */
  trainStepsPerS?: number | null;
}

/**
 * Untimed passes before the timed ones, the same for every engine and for PyTorch
 * (torch_infer.py --warmup): ONNX Runtime's first passes grow its memory arena (a 512x512 pass took
 * 740, 190, 160, 157 ms in turn here) and PyTorch's first pass is 5x its steady one; one warm-up
 * measured the ramp, not the rate an archive run sees.
 */
export const WARMUP_PASSES = 3;

async function rate(engine: InferenceEngine, shape: number[], runs: number, seed: number): Promise<number> {
  const voxels = shape.reduce((a, b) => a * b, 1);
  const rng = new Rng(seed);
  const x = Float32Array.from({ length: voxels }, () => rng.normal());
  const batchShape = [1, ...shape, 1];
  for (let i = 0; i < WARMUP_PASSES; i++) await engine.predict(x, batchShape);
  const t0 = performance.now();
  for (let i = 0; i < runs; i++) await engine.predict(x, batchShape);
  return +((runs * voxels) / 1e6 / ((performance.now() - t0) / 1000)).toFixed(4);
}

/** The manifest fields the exporter reads, for a bench's freshly built U-Net (no model folder). */
export function benchManifest(network: UNetConfig): ModelManifest {
  return { method: 'n2v', network, normalisation: { mode: 'meanstd', offset: 0, scale: 1 } } as unknown as ModelManifest;
}

/**
 * The reference U-Net of `dims`, with every conv at its level's width as torch_infer.py builds it
 * (472,897 weights in 2D): the same arithmetic on every engine. Our default widths (CSBDeep's
 * halving) do 30% fewer multiply-adds, which flattered every engine against PyTorch before.
 */
function referenceNetwork(dims: 2 | 3) {
  const network: UNetConfig = { ...defaultUNetConfig(dims), widths: 'level' };
  return { model: buildUNet(network, 1), manifest: benchManifest(network) };
}

/** ONNX Runtime (CPU provider) and tfjs (the active backend) on the same networks and inputs. */
export async function measureEngines(threads: number, runs2d: number, runs3d: number, with3d: boolean, shapes: BenchShapes = { d2: SHAPE_2D, d3: SHAPE_3D }): Promise<EngineRates[]> {
  const out: EngineRates[] = [];
  const rates = { onnx: { mpx2d: 0, mvox3d: null as number | null }, tfjs: { mpx2d: 0, mvox3d: null as number | null } };
  for (const dims of with3d ? ([2, 3] as const) : ([2] as const)) {
    const { model, manifest } = referenceNetwork(dims);
    const onnx = await openOnnxEngine({ model: exportOnnx(model, manifest).bytes, device: 'cpu', threads });
    const tfjs = tfjsEngine(model);
    const shape = dims === 2 ? shapes.d2 : shapes.d3;
    const runs = dims === 2 ? runs2d : runs3d;
    for (const [name, engine] of [['onnx', onnx], ['tfjs', tfjs]] as const) {
      const r = await rate(engine, shape, runs, dims);
      if (dims === 2) rates[name].mpx2d = r;
      else rates[name].mvox3d = r;
    }
    await onnx.dispose();
    model.dispose();
  }
  for (const name of ['onnx', 'tfjs'] as const) out.push({ engine: name, threads, ...rates[name] });
  return out;
}

/**
 * glibc malloc settings under which PyTorch reuses its freed activations: the ones of a 512x512
 * 32-channel layer (32 MiB and more) lie above glibc's largest mmap threshold, so by default every
 * forward pass maps fresh pages and faults each one in (zeroed by the kernel), then unmaps them: on
 * this machine as much system time as compute, and 7-11x slower in 2D (2.4-3.6x in 3D), more the
 * more loaded the machine is. ONNX Runtime's arena allocator (and tfjs' wasm heap) reuse their
 * memory; PyTorch's own tuning guides preload jemalloc or tcmalloc for the same reason. No mmap for allocations, no trimming of the heap: the same
 * effect with the allocator Debian ships.
 */
export const TORCH_MALLOC_REUSE: Readonly<Record<string, string>> = { MALLOC_MMAP_MAX_: '0', MALLOC_TRIM_THRESHOLD_: String(2 ** 40) };

/**
 * PyTorch CPU (Debian python3-torch, /usr/bin/python3) on the same networks; null when it is not
 * installed. `allocator` 'reuse' (the fair comparison) runs it under TORCH_MALLOC_REUSE, 'default'
 * with glibc's defaults (what a plain `python3` gives).
 */
export function measureTorch(threads: number, runs2d: number, runs3d: number, with3d: boolean, allocator: 'reuse' | 'default' = 'reuse', trainSteps = 0): EngineRates | null {
  const python = '/usr/bin/python3';
  if (!existsSync(python)) return null;
  try {
    execFileSync(python, ['-c', 'import torch'], { stdio: 'ignore' });
  } catch {
    return null;
  }
  const script = path.join(PACKAGE_ROOT, 'bench', 'torch_infer.py');
  const env: NodeJS.ProcessEnv = { ...process.env, OMP_NUM_THREADS: String(threads) };
  for (const name of Object.keys(TORCH_MALLOC_REUSE)) delete env[name];
  const line = execFileSync(python, [script, '--threads', String(threads), '--warmup', String(WARMUP_PASSES), '--runs2d', String(runs2d), '--runs3d', String(with3d ? runs3d : 0), '--train-steps', String(trainSteps)], {
    encoding: 'utf8',
    env: allocator === 'reuse' ? { ...env, ...TORCH_MALLOC_REUSE } : env,
  });
  const r = JSON.parse(line.trim().split('\n').pop()!) as { mpx2d: number; mvox3d: number | null; trainStepsPerS: number | null };
  return { engine: allocator === 'reuse' ? 'torch' : 'torch-default-malloc', threads, mpx2d: r.mpx2d, mvox3d: with3d ? r.mvox3d : null, trainStepsPerS: r.trainStepsPerS };
}
