/**
 * Chooses, loads and activates the TensorFlow.js backend for the whole process.
 *
 * Order for 'auto': @tensorflow/tfjs-node-gpu when it loads and TensorFlow sees a GPU, then webgpu
 * when Dawn finds a hardware adapter (backend/webgpu.ts; a software adapter such as llvmpipe only
 * on an explicit 'webgpu'), then @tensorflow/tfjs-node, then wasm (threaded, all cores), then the
 * plain JS cpu backend. What 'auto' skipped and why is in BackendInfo.skipped (the CLI prints it
 * at --verbose only: a missing package is the normal case, not a warning). The two tfjs-node
 * packages are not dependencies (their install downloads libtensorflow); they are used when a user
 * installed them (docs/webgpu.md).
 *
 * GPU rule: tfjs-node-gpu's native binding lists TensorFlow's devices when it starts
 * (TF_DeviceList) and runs ops on the first device of type "GPU" if there is one, else on the
 * CPU; the backend it registers exposes that as `isUsingGpuDevice`. We count the GPU as seen
 * only when the active 'tensorflow' backend has `isGPUPackage === true` and
 * `isUsingGpuDevice === true`. When tfjs-node-gpu loads but sees no GPU (no NVIDIA device, or
 * CUDA/cuDNN libraries missing), its CPU TensorFlow is what tfjs-node would give, so 'auto'
 * keeps it (after webgpu) and reports it as 'tensorflow' (loading tfjs-node too would register a
 * second 'tensorflow' backend over it).
 */
import { createRequire } from 'node:module';
import os from 'node:os';
import * as tf from '@tensorflow/tfjs-core';
import '@tensorflow/tfjs-backend-cpu';
import { BlindspotError, ExitCode, UsageError } from '../core/errors.js';
import { registerWasmTrainingKernels } from './kernels/index.js';
import { startWasmBackend } from './wasm-threads.js';
import { describeAdapter, startWebgpuBackend, webgpuPackageVersions, WebgpuUnavailable } from './webgpu.js';

export type BackendChoice = 'auto' | 'tensorflow-gpu' | 'webgpu' | 'tensorflow' | 'wasm' | 'cpu';
export const BACKEND_CHOICES: readonly BackendChoice[] = ['auto', 'tensorflow-gpu', 'webgpu', 'tensorflow', 'wasm', 'cpu'];

export interface BackendInfo {
  name: 'tensorflow-gpu' | 'webgpu' | 'tensorflow' | 'wasm' | 'cpu';
  /** The tfjs backend name now active: 'tensorflow', 'webgpu', 'wasm' or 'cpu'. */
  tfBackend: string;
  /** Whether it computes on a hardware GPU (false for webgpu on a software adapter). */
  gpu: boolean;
  /**
   * The largest tensor the device holds, bytes (webgpu: the adapter's maxStorageBufferBindingSize,
   * since a kernel binds each tensor as one storage buffer); absent where only host memory bounds it.
   */
  maxTensorBytes?: number;
  /** What 'auto' tried before this one and why each was skipped (for --verbose). */
  skipped?: string[];
  /** Threads the backend computes with (for TensorFlow: the cores its own pool can use). */
  threads: number;
  /** Whether wasm SIMD is in use (false for the native and cpu backends). */
  simd: boolean;
  /** One line for the log: build, versions, and why a fallback happened. */
  detail: string;
}

/** An explicitly requested backend that cannot be loaded here. */
export class BackendUnavailableError extends BlindspotError {
  readonly backend: BackendChoice;
  /** Why, starting with the package concerned. */
  readonly reason: string;
  constructor(backend: BackendChoice, reason: string, options?: { cause?: unknown }) {
    super(`backend '${backend}' is not available: ${reason}`, ExitCode.failure, options);
    this.backend = backend;
    this.reason = reason;
  }
}

const TF_NODE = '@tensorflow/tfjs-node';
const TF_NODE_GPU = '@tensorflow/tfjs-node-gpu';

interface Request {
  backend: BackendChoice;
  /** Threads asked for, or undefined for "all cores". */
  threads: number | undefined;
}

let started: { request: Request; info: Promise<BackendInfo> } | null = null;
let active: BackendInfo | null = null;

/**
 * The largest tensor, in bytes, the active backend's device can hold (webgpu: one storage buffer
 * binding), or null where only host memory bounds it. Tile and batch sizes are checked against it.
 */
export function maxTensorBytes(): number | null {
  if (active === null || active.maxTensorBytes === undefined || tf.getBackend() !== active.tfBackend) return null;
  return active.maxTensorBytes;
}

/**
 * Loads and activates a backend. Idempotent per process: later calls get the first call's
 * result when they ask for the same thing or leave it open ('auto', no thread count), and an
 * error when they ask for something else, since the backend cannot change once tensors exist.
 * Throws a {@link BackendUnavailableError} if an explicitly requested backend cannot load.
 * `threads`: 0 or absent means all cores (os.availableParallelism()).
 */
export async function initBackend(opts: { backend?: BackendChoice; threads?: number }): Promise<BackendInfo> {
  const request: Request = { backend: opts.backend ?? 'auto', threads: validThreads(opts.threads) };
  if (!BACKEND_CHOICES.includes(request.backend)) {
    throw new UsageError(`backend must be one of ${BACKEND_CHOICES.join(', ')}, got '${String(request.backend)}'`);
  }
  if (started !== null) {
    const first = started;
    const info = await first.info;
    const sameBackend = request.backend === 'auto' || request.backend === first.request.backend || request.backend === info.name;
    const sameThreads = request.threads === undefined || request.threads === first.request.threads || request.threads === info.threads;
    if (!sameBackend || !sameThreads) {
      throw new Error(`initBackend: the backend is already ${info.name} with ${info.threads} thread(s) in this process; ` + `cannot switch to ${request.backend}${request.threads === undefined ? '' : ` with ${request.threads} thread(s)`}`);
    }
    return info;
  }
  const attempt = { request, info: choose(request) };
  started = attempt;
  try {
    active = await attempt.info;
    return active;
  } catch (error) {
    // A failed explicit request leaves the process free to ask for another backend.
    if (started === attempt) started = null;
    throw error;
  }
}

function validThreads(threads: number | undefined): number | undefined {
  if (threads === undefined || threads === 0) return undefined;
  if (!Number.isInteger(threads) || threads < 0) throw new UsageError(`threads must be a positive integer (0 for all cores), got ${threads}`);
  return threads;
}

async function choose(request: Request): Promise<BackendInfo> {
  const threads = request.threads ?? os.availableParallelism();
  switch (request.backend) {
    case 'tensorflow-gpu': {
      const info = await loadTensorflow(TF_NODE_GPU, 'tensorflow-gpu');
      if (info.name !== 'tensorflow-gpu') throw new BackendUnavailableError('tensorflow-gpu', `${TF_NODE_GPU} loaded, but TensorFlow found no GPU device (no NVIDIA GPU, or its CUDA/cuDNN libraries are missing)`);
      return info;
    }
    case 'tensorflow':
      return loadTensorflow(TF_NODE, 'tensorflow');
    case 'wasm':
      return loadWasm(threads);
    case 'cpu':
      return loadCpu('as requested');
    case 'webgpu':
      return loadWebgpu(true);
    case 'auto': {
      const skipped: string[] = [];
      const reason = (error: unknown): string => (error instanceof BackendUnavailableError ? error.reason : String(error));
      // tfjs-node-gpu without a visible GPU registers its CPU TensorFlow: kept as the 'tensorflow' choice below.
      let tensorflowOnCpu: BackendInfo | null = null;
      try {
        const info = await loadTensorflow(TF_NODE_GPU, 'tensorflow-gpu');
        if (info.name === 'tensorflow-gpu') return info;
        tensorflowOnCpu = info;
        skipped.push(`${TF_NODE_GPU}: TensorFlow sees no GPU`);
      } catch (error) {
        skipped.push(reason(error));
      }
      try {
        return { ...(await loadWebgpu(false)), skipped: [...skipped] };
      } catch (error) {
        skipped.push(reason(error));
      }
      if (tensorflowOnCpu !== null && (await tf.setBackend('tensorflow'))) return { ...tensorflowOnCpu, skipped };
      if (tensorflowOnCpu === null) {
        try {
          return { ...(await loadTensorflow(TF_NODE, 'tensorflow')), skipped: [...skipped] };
        } catch (error) {
          skipped.push(reason(error));
        }
      }
      try {
        const wasm = await loadWasm(threads);
        return { ...wasm, detail: `${wasm.detail} (auto)`, skipped };
      } catch (error) {
        skipped.push(reason(error));
      }
      return { ...(await loadCpu('auto')), skipped };
    }
  }
}

async function loadWebgpu(allowSoftware: boolean): Promise<BackendInfo> {
  try {
    const adapter = await startWebgpuBackend({ allowSoftware });
    const versions = webgpuPackageVersions();
    return {
      name: 'webgpu',
      tfBackend: 'webgpu',
      gpu: !adapter.software,
      maxTensorBytes: Math.min(adapter.maxBufferSize, adapter.maxStorageBufferBindingSize),
      // The JS thread drives the device; the adapter's own parallelism is not ours to count.
      threads: 1,
      simd: false,
      detail: `${describeAdapter(adapter)}; webgpu@${versions.dawn}, @tensorflow/tfjs-backend-webgpu@${versions.tfjs}`,
    };
  } catch (error) {
    if (error instanceof WebgpuUnavailable) throw new BackendUnavailableError('webgpu', error.message, { cause: error });
    throw new BackendUnavailableError('webgpu', `failed to start: ${error instanceof Error ? error.message : String(error)}`, { cause: error });
  }
}

/** The shape of tfjs-node's NodeJSKernelBackend that we read (it ships no types here). */
interface NodeKernelBackend {
  isGPUPackage?: unknown;
  isUsingGpuDevice?: unknown;
}

async function loadTensorflow(pkg: typeof TF_NODE | typeof TF_NODE_GPU, choice: 'tensorflow' | 'tensorflow-gpu'): Promise<BackendInfo> {
  const version = installedVersion(pkg);
  if (version === null) {
    // Not a dependency of blindspot (npm ci must not download libtensorflow); a user adds it by hand.
    throw new BackendUnavailableError(choice, `${pkg} is not installed (not a dependency: \`npm install ${pkg}@${tf.version_core}\` adds it and downloads libtensorflow 2.9; or choose 'webgpu' or 'wasm')`);
  }
  // A variable specifier: the package is optional, has no types here, and must not be resolved at build time.
  const specifier: string = pkg;
  try {
    await import(specifier);
  } catch (error) {
    throw new BackendUnavailableError(choice, `${pkg}@${version} is installed but failed to load: ${error instanceof Error ? error.message : String(error)}`, { cause: error });
  }
  if (tf.findBackendFactory('tensorflow') === null) {
    throw new BackendUnavailableError(choice, `${pkg}@${version} loaded but registered its 'tensorflow' backend with another copy of @tensorflow/tfjs-core than ${tf.version_core}`);
  }
  if (!(await tf.setBackend('tensorflow'))) {
    throw new BackendUnavailableError(choice, `${pkg}@${version} loaded but its TensorFlow backend failed to initialise`);
  }
  const backend = tf.backend() as unknown as NodeKernelBackend;
  const onGpu = backend.isGPUPackage === true && backend.isUsingGpuDevice === true;
  const cores = os.availableParallelism();
  if (onGpu) {
    return { name: 'tensorflow-gpu', tfBackend: 'tensorflow', gpu: true, threads: cores, simd: false, detail: `${pkg}@${version}, TensorFlow on a CUDA GPU` };
  }
  const where = pkg === TF_NODE_GPU ? 'without a visible GPU: TensorFlow on the CPU' : 'TensorFlow on the CPU';
  return { name: 'tensorflow', tfBackend: 'tensorflow', gpu: false, threads: cores, simd: false, detail: `${pkg}@${version}, ${where} (it sizes its own thread pool)` };
}

async function loadWasm(threads: number): Promise<BackendInfo> {
  // Installed before activation so their setup runs with the backend's.
  registerWasmTrainingKernels();
  let wasm: Awaited<ReturnType<typeof startWasmBackend>>;
  try {
    wasm = await startWasmBackend(threads);
  } catch (error) {
    // tfjs rejects with a plain { message } object when the module aborts.
    const message = typeof error === 'object' && error !== null && 'message' in error ? String(error.message) : String(error);
    throw new BackendUnavailableError('wasm', `@tensorflow/tfjs-backend-wasm failed to start: ${message}`, { cause: error });
  }
  return { name: 'wasm', tfBackend: 'wasm', gpu: false, threads: wasm.threads, simd: wasm.simd, detail: wasm.detail };
}

async function loadCpu(why: string): Promise<BackendInfo> {
  if (!(await tf.setBackend('cpu'))) throw new BackendUnavailableError('cpu', 'tf.setBackend("cpu") failed');
  // tfjs-backend-cpu prints an "install tfjs-node" banner on its first write in Node; `detail`
  // already says so, and the CLI owns the output.
  const cpuBackend = tf.backend() as unknown as { firstUse?: unknown };
  if (typeof cpuBackend.firstUse === 'boolean') cpuBackend.firstUse = false;
  return { name: 'cpu', tfBackend: 'cpu', gpu: false, threads: 1, simd: false, detail: `@tensorflow/tfjs-backend-cpu ${tf.version_core} (plain JavaScript, very slow for training; ${why})` };
}

function installedVersion(pkg: string): string | null {
  try {
    const requireFromHere = createRequire(import.meta.url);
    return (requireFromHere(`${pkg}/package.json`) as { version: string }).version;
  } catch {
    return null;
  }
}
