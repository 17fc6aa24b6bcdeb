/**
 * Chooses, loads and activates the TensorFlow.js backend for the whole process.
 *
 * Order for 'auto': @tensorflow/tfjs-node-gpu when it loads and TensorFlow sees a GPU, then
 * @tensorflow/tfjs-node, then wasm (threaded, all cores), then the plain JS cpu backend.
 *
 * GPU rule: tfjs-node-gpu's native binding lists TensorFlow's devices when it starts
 * (TF_DeviceList) and runs ops on the first device of type "GPU" if there is one, else on the
 * CPU; the backend it registers exposes that as `isUsingGpuDevice`. We count the GPU as seen
 * only when the active 'tensorflow' backend has `isGPUPackage === true` and
 * `isUsingGpuDevice === true`. When tfjs-node-gpu loads but sees no GPU (no NVIDIA device, or
 * CUDA/cuDNN libraries missing), its CPU TensorFlow is what tfjs-node would give, so 'auto'
 * keeps it and reports it as 'tensorflow' (loading tfjs-node too would register a second
 * 'tensorflow' backend over it).
 */
import { createRequire } from 'node:module';
import os from 'node:os';
import * as tf from '@tensorflow/tfjs-core';
import '@tensorflow/tfjs-backend-cpu';
import { BlindspotError, ExitCode, UsageError } from '../core/errors.js';
import { registerWasmTrainingKernels } from './kernels/index.js';
import { startWasmBackend } from './wasm-threads.js';

export type BackendChoice = 'auto' | 'tensorflow-gpu' | 'tensorflow' | 'wasm' | 'cpu';
export const BACKEND_CHOICES: readonly BackendChoice[] = ['auto', 'tensorflow-gpu', 'tensorflow', 'wasm', 'cpu'];

export interface BackendInfo {
  name: 'tensorflow-gpu' | 'tensorflow' | 'wasm' | 'cpu';
  /** The tfjs backend name now active: 'tensorflow', 'wasm' or 'cpu'. */
  tfBackend: string;
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
    return await attempt.info;
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
    case 'auto': {
      const skipped: string[] = [];
      for (const [pkg, choice] of [[TF_NODE_GPU, 'tensorflow-gpu'], [TF_NODE, 'tensorflow']] as const) {
        try {
          return await loadTensorflow(pkg, choice);
        } catch (error) {
          skipped.push(error instanceof BackendUnavailableError ? error.reason : `${pkg}: ${String(error)}`);
        }
      }
      try {
        const wasm = await loadWasm(threads);
        return { ...wasm, detail: `${wasm.detail} (auto; ${skipped.join('; ')})` };
      } catch (error) {
        skipped.push(error instanceof BackendUnavailableError ? error.reason : String(error));
      }
      return loadCpu(`auto; ${skipped.join('; ')}`);
    }
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
    throw new BackendUnavailableError(choice, `${pkg} is not installed (optional dependency; its install downloads libtensorflow: \`npm install ${pkg}\`, or choose 'wasm')`);
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
    return { name: 'tensorflow-gpu', tfBackend: 'tensorflow', threads: cores, simd: false, detail: `${pkg}@${version}, TensorFlow on a CUDA GPU` };
  }
  const where = pkg === TF_NODE_GPU ? 'without a visible GPU: TensorFlow on the CPU' : 'TensorFlow on the CPU';
  return { name: 'tensorflow', tfBackend: 'tensorflow', threads: cores, simd: false, detail: `${pkg}@${version}, ${where} (it sizes its own thread pool)` };
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
  return { name: 'wasm', tfBackend: 'wasm', threads: wasm.threads, simd: wasm.simd, detail: wasm.detail };
}

async function loadCpu(why: string): Promise<BackendInfo> {
  if (!(await tf.setBackend('cpu'))) throw new BackendUnavailableError('cpu', 'tf.setBackend("cpu") failed');
  // tfjs-backend-cpu prints an "install tfjs-node" banner on its first write in Node; `detail`
  // already says so, and the CLI owns the output.
  const cpuBackend = tf.backend() as unknown as { firstUse?: unknown };
  if (typeof cpuBackend.firstUse === 'boolean') cpuBackend.firstUse = false;
  return { name: 'cpu', tfBackend: 'cpu', threads: 1, simd: false, detail: `@tensorflow/tfjs-backend-cpu ${tf.version_core} (plain JavaScript, very slow for training; ${why})` };
}

function installedVersion(pkg: string): string | null {
  try {
    const requireFromHere = createRequire(import.meta.url);
    return (requireFromHere(`${pkg}/package.json`) as { version: string }).version;
  } catch {
    return null;
  }
}
