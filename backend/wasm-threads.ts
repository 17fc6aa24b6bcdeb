/**
 * The TensorFlow.js wasm backend with real threads under Node.
 *
 * tfjs-backend-wasm 4.22.0 ships a threaded SIMD build (emscripten pthreads + XNNPACK's
 * pthreadpool) but runs single-threaded in Node. Four things stand in the way; each is worked
 * around here without touching node_modules:
 *
 * 1. Its `WASM_HAS_MULTITHREAD_SUPPORT` flag returns false whenever it detects Node
 *    (tfjs issue #3830). We set the flag ourselves after probing for shared wasm memory.
 * 2. Emscripten starts each pthread with `new Worker(url)` where `url` is a `blob:` URL of the
 *    worker script; Node's worker_threads cannot load `blob:` URLs. During initialisation a
 *    global `Worker` shim ({@link PthreadWorker}) is installed that ignores that URL and runs
 *    the same worker script (the package's own `wasm-out/...worker.js` string) with `eval: true`.
 * 3. The `load` message sent to each worker carries, as the main script, a Blob holding the
 *    rollup-bundled factory's source; that source refers to names that only exist inside the
 *    bundle (`require$$0`, `commonjsGlobal`, tslib helpers). The shim rewrites that field to the
 *    path of the standalone emscripten factory of the same build
 *    (`wasm-out/tfjs-backend-wasm-threaded-simd.js`), which the worker script loads with its own
 *    `importScripts` (a file read).
 * 4. The C++ side caps threads at `emscripten_num_logical_cores() / 2` (its comment assumes
 *    hyper-threading), and in Node that count is `os.cpus().length`; on 2 vCPUs a request for 2
 *    threads gives 1. The count is read once, during the module's static initialisation, so
 *    `os.cpus` (and `os.availableParallelism`) report 2 x the requested threads only while the
 *    module initialises, and are restored right after.
 *
 * Besides, emscripten `ref()`s a worker while it runs a pthread, and XNNPACK's pool threads run
 * for the life of the process, so the process would never exit; the shim keeps its workers
 * unref'd (they only serve synchronous wasm calls made by this thread).
 *
 * All of this depends on the exact 4.22.0 build: the version is checked, and
 * test/backend.test.ts fails if the thread count or the parallel speed-up is no longer reached.
 * If the threaded build cannot start, the caller falls back to single-threaded wasm and is told
 * why.
 */
import { createRequire } from 'node:module';
import os from 'node:os';
import path from 'node:path';
import { Worker as NodeWorker } from 'node:worker_threads';
import * as tf from '@tensorflow/tfjs-core';
import * as tfWasm from '@tensorflow/tfjs-backend-wasm';

/** The tfjs-backend-wasm version these workarounds were written against. */
export const WASM_BACKEND_VERSION = '4.22.0';

/**
 * Most threads the wasm backend can use: `max_num_threads` in tfjs-backend-wasm's backend.cc,
 * which is also the number of pthread workers emscripten starts up front.
 */
export const WASM_MAX_THREADS = 8;

/** tfjs-backend-wasm registers 'wasm' with this priority; we keep it when re-registering. */
const WASM_BACKEND_PRIORITY = 2;

/** A threaded start that takes longer than this is treated as hung. */
const THREADED_INIT_TIMEOUT_MS = 30_000;

const requireFromHere = createRequire(import.meta.url);
const wasmPackageDir = path.dirname(requireFromHere.resolve('@tensorflow/tfjs-backend-wasm/package.json'));
const threadedFactoryPath = path.join(wasmPackageDir, 'wasm-out', 'tfjs-backend-wasm-threaded-simd.js');
const workerScriptModulePath = path.join(wasmPackageDir, 'wasm-out', 'tfjs-backend-wasm-threaded-simd.worker.js');

/** The factory tfjs-backend-wasm registered for 'wasm', captured before we ever replace it. */
const shippedWasmFactory: () => Promise<tf.KernelBackend> = (() => {
  const factory = tf.findBackendFactory('wasm');
  if (factory === null) throw new Error('@tensorflow/tfjs-backend-wasm did not register the wasm backend');
  return async () => factory();
})();

export interface WasmStartResult {
  /** Threads XNNPACK actually uses (tfjs `getThreadsCount()`). */
  threads: number;
  simd: boolean;
  /** Whether the threaded SIMD build is the one running. */
  threadedBuild: boolean;
  detail: string;
}

/**
 * Starts the wasm backend with `requestedThreads` threads (capped at {@link WASM_MAX_THREADS})
 * and makes it the active tfjs backend. One thread, or a threaded start that fails, gives the
 * single-threaded SIMD build; `detail` says which and why. Throws if even that cannot start.
 */
export async function startWasmBackend(requestedThreads: number): Promise<WasmStartResult> {
  const simd = (await tf.env().getAsync('WASM_HAS_SIMD_SUPPORT')) === true;
  const wantedThreads = Math.min(requestedThreads, WASM_MAX_THREADS);
  const capNote = requestedThreads > WASM_MAX_THREADS ? ` (${requestedThreads} requested; tfjs-backend-wasm uses at most ${WASM_MAX_THREADS})` : '';

  if (wasmBackendConstructed()) {
    // Something initialised 'wasm' before us (e.g. tf.ready()); its thread count is fixed now.
    await activate();
    const threads = tfWasm.getThreadsCount();
    return { threads, simd, threadedBuild: threads > 1, detail: `tfjs-backend-wasm ${tfWasm.version_wasm}, already initialised elsewhere with ${threads} thread(s)` };
  }

  let singleThreadReason = 'one thread requested';
  if (wantedThreads > 1) {
    const problem = threadSupportProblem(simd);
    if (problem === null) {
      try {
        const threads = await startThreaded(wantedThreads);
        const shortfall = threads < wantedThreads ? `; only ${threads} of ${wantedThreads} threads started (a threads workaround no longer applies)` : '';
        return { threads, simd, threadedBuild: true, detail: `tfjs-backend-wasm ${tfWasm.version_wasm}, threaded SIMD build, ${threads} threads via worker_threads${capNote}${shortfall}` };
      } catch (error) {
        singleThreadReason = `threaded build failed to start: ${messageOf(error)}`;
      }
    } else {
      singleThreadReason = problem;
    }
  }

  tf.env().set('WASM_HAS_MULTITHREAD_SUPPORT', false);
  tfWasm.setThreadsCount(1);
  const backend = await shippedWasmFactory();
  await useBackendInstance(backend);
  const build = simd ? 'SIMD build' : 'plain build (no wasm SIMD in this runtime)';
  return { threads: tfWasm.getThreadsCount(), simd, threadedBuild: false, detail: `tfjs-backend-wasm ${tfWasm.version_wasm}, single-threaded ${build}: ${singleThreadReason}` };
}

/**
 * Whether a wasm backend instance already exists: tfjs-backend-wasm's getThreadsCount() throws
 * until one is constructed. (tf.findBackend would itself start one.)
 */
function wasmBackendConstructed(): boolean {
  try {
    tfWasm.getThreadsCount();
    return true;
  } catch {
    return false;
  }
}

/** Null when this runtime can run the threaded build, else why not. */
export function threadSupportProblem(simd: boolean): string | null {
  if (tfWasm.version_wasm !== WASM_BACKEND_VERSION) {
    return `tfjs-backend-wasm is ${tfWasm.version_wasm}; the threads workarounds are written for ${WASM_BACKEND_VERSION}`;
  }
  if (!simd) return 'no wasm SIMD in this runtime (tfjs ships threads only in its SIMD build)';
  if (typeof SharedArrayBuffer !== 'function') return 'SharedArrayBuffer is not available';
  try {
    const memory = new wasmGlobal.Memory({ initial: 1, maximum: 1, shared: true });
    if (!(memory.buffer instanceof SharedArrayBuffer)) return 'shared WebAssembly.Memory is not backed by a SharedArrayBuffer';
  } catch (error) {
    return `shared WebAssembly.Memory is not supported: ${messageOf(error)}`;
  }
  return null;
}

/** The WebAssembly global, typed for the one use here (the project's lib has no DOM types). */
const wasmGlobal = (globalThis as unknown as {
  WebAssembly: { Memory: new (descriptor: { initial: number; maximum: number; shared: boolean }) => { buffer: ArrayBufferLike } };
}).WebAssembly;

/** One threaded start: the workers it made, so a failed start can end them and ignore their errors. */
interface StartAttempt {
  state: 'starting' | 'started' | 'failed';
  workers: PthreadWorker[];
  fail: (error: Error) => void;
}
let currentStart: StartAttempt | null = null;

let cachedWorkerScript: string | undefined;
function pthreadWorkerScript(): string {
  if (cachedWorkerScript === undefined) {
    const exported = (requireFromHere(workerScriptModulePath) as { wasmWorkerContents?: unknown }).wasmWorkerContents;
    if (typeof exported !== 'string') throw new Error(`${workerScriptModulePath} no longer exports wasmWorkerContents`);
    // The script sits in a template literal there, so its "\n" escapes became real newlines
    // inside string literals; tfjs re-escapes them the same way before making its blob.
    cachedWorkerScript = exported.replace(/\n/g, '\\n');
  }
  return cachedWorkerScript;
}

/**
 * What emscripten gets when it calls `new Worker(blobUrl)`: a Node worker running tfjs's own
 * pthread worker script, told to load the standalone factory instead of the bundle's blob.
 */
class PthreadWorker extends NodeWorker {
  constructor(scriptUrl: unknown) {
    super(pthreadWorkerScript(), { eval: true });
    // The blob behind this URL is never read; free it.
    if (typeof scriptUrl === 'string' && scriptUrl.startsWith('blob:')) URL.revokeObjectURL(scriptUrl);
    if (currentStart === null) throw new Error('tfjs-backend-wasm started a pthread worker after its start-up');
    this.attempt = currentStart;
    this.attempt.workers.push(this);
    this.unref();
  }

  private readonly attempt: StartAttempt;

  override postMessage(message: unknown, transferList?: Parameters<NodeWorker['postMessage']>[1]): void {
    if (isLoadCommand(message)) message = { ...message, urlOrBlob: threadedFactoryPath };
    super.postMessage(message, transferList);
  }

  /** Kept unref'd: XNNPACK's pool threads live as long as the process and must not hold it open. */
  override ref(): void {}

  override on(event: string | symbol, listener: (...args: any[]) => void): this {
    if (event !== 'error') return super.on(event, listener);
    // Emscripten's handler rethrows, which would crash the process. During the start an error
    // fails the start instead (we fall back to one thread), and the other workers of a failed
    // start, being terminated, may report the same error: ignored.
    return super.on('error', (error: unknown) => {
      if (this.attempt.state === 'starting') this.attempt.fail(error instanceof Error ? error : new Error(messageOf(error)));
      else if (this.attempt.state === 'started') listener(error);
    });
  }
}

function isLoadCommand(message: unknown): message is { cmd: 'load'; urlOrBlob: unknown } {
  return typeof message === 'object' && message !== null && (message as { cmd?: unknown }).cmd === 'load';
}

async function startThreaded(threads: number): Promise<number> {
  const savedWorker = Object.getOwnPropertyDescriptor(globalThis, 'Worker');
  const savedCpus = os.cpus;
  const savedParallelism = os.availableParallelism;
  let timer: NodeJS.Timeout | undefined;
  let fail: (error: Error) => void = () => {};
  const failed = new Promise<never>((_, reject) => {
    fail = reject;
    timer = setTimeout(() => reject(new Error(`no answer from the pthread workers after ${THREADED_INIT_TIMEOUT_MS / 1000} s`)), THREADED_INIT_TIMEOUT_MS);
  });
  const attempt: StartAttempt = { state: 'starting', workers: [], fail };
  currentStart = attempt;
  try {
    // Emscripten assigns node's Worker to the global before starting its workers; the no-op
    // setter keeps the shim in place.
    Object.defineProperty(globalThis, 'Worker', { configurable: true, get: () => PthreadWorker, set: () => {} });
    const cores = savedCpus.call(os);
    os.cpus = () => Array.from({ length: 2 * threads }, (_, i) => cores[i % cores.length]);
    os.availableParallelism = () => 2 * threads;
    tf.env().set('WASM_HAS_MULTITHREAD_SUPPORT', true);
    tfWasm.setThreadsCount(threads);
    const backend = await Promise.race([shippedWasmFactory(), failed]);
    await useBackendInstance(backend);
    attempt.state = 'started';
    return tfWasm.getThreadsCount();
  } catch (error) {
    attempt.state = 'failed';
    for (const worker of attempt.workers) void worker.terminate();
    throw error;
  } finally {
    clearTimeout(timer);
    currentStart = null;
    os.cpus = savedCpus;
    os.availableParallelism = savedParallelism;
    if (savedWorker !== undefined) Object.defineProperty(globalThis, 'Worker', savedWorker);
    else delete (globalThis as { Worker?: unknown }).Worker;
  }
}

/**
 * Makes an already constructed wasm backend the one registered as 'wasm' and active. The
 * shipped factory is called directly (not through tf.setBackend) so its errors reach us
 * instead of being logged, and so a hung threaded start can be abandoned.
 */
async function useBackendInstance(backend: tf.KernelBackend): Promise<void> {
  if (tf.findBackendFactory('wasm') !== null) tf.removeBackend('wasm');
  tf.registerBackend('wasm', () => backend, WASM_BACKEND_PRIORITY);
  await activate();
}

async function activate(): Promise<void> {
  if (!(await tf.setBackend('wasm'))) throw new Error('tf.setBackend("wasm") failed');
}

function messageOf(error: unknown): string {
  if (error instanceof Error) return error.message;
  if (typeof error === 'object' && error !== null && typeof (error as { message?: unknown }).message === 'string') {
    return (error as { message: string }).message;
  }
  return String(error);
}
