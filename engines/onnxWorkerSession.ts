/**
 * The main-thread side of an ONNX Runtime session that lives in a worker thread
 * (engines/onnxWorker.ts). onnxruntime-node's `session.run` blocks the thread that calls it for the
 * whole inference, so a session on the main thread stops reading, decompressing, stitching and
 * writing while the model runs; in a worker those overlap with it. One long-lived worker owns one
 * session: batches go over as messages, outputs come back with their buffer transferred (no copy).
 * Every wait is bounded: opening, each run and closing have a time limit, and a worker that crashes
 * or exits rejects every pending call with the reason.
 */
import { existsSync } from 'node:fs';
import { PACKAGE_ROOT } from '../core/version.js';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { Worker } from 'node:worker_threads';
import type { DeviceName } from './engine.js';

/** What the worker is started with (workerData). */
export interface OnnxWorkerData {
  model: Uint8Array;
  device: DeviceName;
  threads: number;
  /**
   * Two Int32 flags shared with the main thread: [BUSY] is 1 while the worker is inside a native
   * run, [STOP] set by the main thread forbids starting another (see onProcessExit).
   */
  flags?: SharedArrayBuffer;
}

/** Indices into OnnxWorkerData.flags. */
export const BUSY = 0;
export const STOP = 1;
/** How long process exit waits for a worker to leave the batch it is in. */
const EXIT_WAIT_MS = 10_000;

const liveRunners = new Set<WorkerRunner>();
let exitHookInstalled = false;

/**
 * process.exit() stops worker threads, and stopping one inside a native ONNX Runtime run aborts the
 * whole process (onnxruntime-node throws a C++ Napi::Error into a terminating thread: exit code 134
 * instead of the one asked for). So on exit each live worker is told to start no new batch, and
 * the exiting thread blocks (bounded) until the batch in progress, if any, returns.
 */
function onProcessExit(): void {
  for (const runner of liveRunners) runner.waitOutOfNative(EXIT_WAIT_MS);
}

export type OnnxWorkerRequest =
  | { type: 'run'; id: number; batch: Float32Array; shape: number[]; outputName: string }
  | { type: 'release' };

export type OnnxWorkerReply =
  | { type: 'ready'; inputNames: string[]; outputNames: string[] }
  | { type: 'failed'; message: string }
  | { type: 'result'; id: number; data: Float32Array; dims: number[] }
  | { type: 'error'; id: number; message: string };

/** A session as the engine uses it, in this thread or in a worker. */
export interface OrtRunner {
  readonly inputNames: readonly string[];
  readonly outputNames: readonly string[];
  run(batch: Float32Array, shape: readonly number[], outputName: string): Promise<{ data: Float32Array; dims: readonly number[] }>;
  release(): Promise<void>;
}

export interface WorkerTimeouts {
  /** Session creation (a TensorRT session builds its engine here: minutes). Default 15 min. */
  openMs?: number;
  /** One batch. Default 30 min. */
  runMs?: number;
  /** Releasing the session and stopping the thread. Default 30 s. */
  closeMs?: number;
}

/**
 * The compiled worker next to this module (dist/engines/onnxWorker.js); when this module runs from
 * TypeScript source (vitest) or from a partial build elsewhere (a test's fixture build), the package's
 * own tsc output under dist/.
 */
export function onnxWorkerFile(): URL {
  const beside = fileURLToPath(new URL('./onnxWorker.js', import.meta.url));
  if (existsSync(beside)) return new URL('./onnxWorker.js', import.meta.url);
  const compiled = path.join(PACKAGE_ROOT, 'dist', 'engines', 'onnxWorker.js');
  if (existsSync(compiled)) return new URL(`file://${compiled}`);
  throw new Error(`the ONNX Runtime worker is not compiled: neither ${beside} nor ${compiled} exists (run npm run build)`);
}

interface Pending {
  resolve(reply: { data: Float32Array; dims: number[] }): void;
  reject(err: Error): void;
  timer: NodeJS.Timeout;
}

/** An ONNX Runtime session in its own worker thread. */
export class WorkerRunner implements OrtRunner {
  /** The thread (exposed for tests that stop it mid-run). */
  readonly worker: Worker;
  inputNames: readonly string[] = [];
  outputNames: readonly string[] = [];
  private readonly pending = new Map<number, Pending>();
  private nextId = 0;
  /** Why the worker cannot take calls any more (set once). */
  private dead: Error | null = null;
  private closing = false;
  private exited = false;
  private readonly runMs: number;
  private readonly closeMs: number;

  private readonly flags: Int32Array;

  private constructor(worker: Worker, timeouts: WorkerTimeouts, flags: Int32Array) {
    this.worker = worker;
    this.flags = flags;
    this.runMs = timeouts.runMs ?? 30 * 60_000;
    this.closeMs = timeouts.closeMs ?? 30_000;
  }

  /** Starts the worker and opens the session there; rejects with ONNX Runtime's message when it cannot. */
  static async open(data: OnnxWorkerData, timeouts: WorkerTimeouts = {}): Promise<WorkerRunner> {
    const flags = new SharedArrayBuffer(2 * Int32Array.BYTES_PER_ELEMENT);
    const worker = new Worker(onnxWorkerFile(), { workerData: { ...data, flags } });
    const runner = new WorkerRunner(worker, timeouts, new Int32Array(flags));
    if (!exitHookInstalled) {
      process.on('exit', onProcessExit);
      exitHookInstalled = true;
    }
    liveRunners.add(runner);
    const openMs = timeouts.openMs ?? 15 * 60_000;
    try {
      await new Promise<void>((resolve, reject) => {
        const timer = setTimeout(() => reject(new Error(`the ONNX Runtime worker did not open its session within ${openMs / 1000} s`)), openMs);
        const done = (err?: Error): void => {
          clearTimeout(timer);
          worker.off('message', onMessage);
          worker.off('error', done);
          worker.off('exit', onExit);
          if (err) reject(err);
          else resolve();
        };
        const onMessage = (reply: OnnxWorkerReply): void => {
          if (reply.type === 'ready') {
            runner.inputNames = reply.inputNames;
            runner.outputNames = reply.outputNames;
            done();
          } else if (reply.type === 'failed') done(new Error(reply.message));
        };
        const onExit = (code: number): void => done(new Error(`the ONNX Runtime worker exited (code ${code}) before its session opened`));
        worker.on('message', onMessage);
        worker.on('error', done);
        worker.on('exit', onExit);
      });
    } catch (err) {
      liveRunners.delete(runner);
      // Idle after a failed open; after an open timeout it may be inside native session creation,
      // where terminate() can abort the process: the lesser evil than a run that never starts.
      await boundedTerminate(worker, runner.closeMs);
      throw err;
    }
    worker.on('message', (reply: OnnxWorkerReply) => runner.onReply(reply));
    worker.on('error', (err: Error) => runner.fail(new Error(`the ONNX Runtime worker crashed: ${err.message}`, { cause: err })));
    worker.on('exit', (code: number) => {
      runner.exited = true;
      liveRunners.delete(runner);
      runner.fail(new Error(runner.closing ? 'the ONNX Runtime engine was disposed' : `the ONNX Runtime worker exited unexpectedly (code ${code})`));
    });
    // An idle worker does not keep the process alive; one with calls pending does.
    worker.unref();
    return runner;
  }

  run(batch: Float32Array, shape: readonly number[], outputName: string): Promise<{ data: Float32Array; dims: readonly number[] }> {
    if (this.dead) return Promise.reject(this.dead);
    if (this.closing) return Promise.reject(new Error('the ONNX Runtime engine was disposed'));
    const id = this.nextId++;
    // The interface promises the caller's batch is left as it was (TTA reuses it), so the worker
    // gets a copy whose buffer is moved, not cloned a second time.
    const copy = batch.slice();
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.fail(new Error(`the ONNX Runtime worker did not answer a [${shape.join(', ')}] batch within ${this.runMs / 1000} s; closing it`));
        // Not terminate(): stopping a thread inside a native ONNX Runtime call aborts the process.
        // The worker releases its session and ends after the batch it is in.
        this.worker.postMessage({ type: 'release' } satisfies OnnxWorkerRequest);
      }, this.runMs);
      this.pending.set(id, { resolve, reject, timer });
      if (this.pending.size === 1) this.worker.ref();
      const request: OnnxWorkerRequest = { type: 'run', id, batch: copy, shape: [...shape], outputName };
      this.worker.postMessage(request, [copy.buffer]);
    });
  }

  /**
   * Releases the session and ends the thread: the worker finishes the batch it is in, releases the
   * session and exits. Bounded: returns after the close time limit even if the worker is still in
   * its batch (it ends after it).
   */
  async release(): Promise<void> {
    if (this.closing) return;
    this.closing = true;
    if (this.exited) return;
    this.worker.ref();
    let timer: NodeJS.Timeout | undefined;
    const exited = new Promise<boolean>((resolve) => {
      timer = setTimeout(() => resolve(false), this.closeMs);
      this.worker.once('exit', () => resolve(true));
    });
    this.worker.postMessage({ type: 'release' } satisfies OnnxWorkerRequest);
    const clean = await exited;
    clearTimeout(timer);
    // Still inside a long batch: terminating it now would abort the process (see onProcessExit).
    // It ends by itself after that batch; unreferenced, it does not keep the process alive.
    if (!clean) this.worker.unref();
  }

  /** Forbids new batches and blocks this thread until the worker is out of its native run (at most `ms`). */
  waitOutOfNative(ms: number): void {
    Atomics.store(this.flags, STOP, 1);
    // Sequentially consistent: the worker sets BUSY before it reads STOP, so either it sees STOP
    // and starts nothing, or this sees BUSY and waits for the run to return.
    const deadline = Date.now() + ms;
    while (Atomics.load(this.flags, BUSY) === 1 && Date.now() < deadline) Atomics.wait(this.flags, BUSY, 1, deadline - Date.now());
  }

  private onReply(reply: OnnxWorkerReply): void {
    if (reply.type !== 'result' && reply.type !== 'error') return;
    const call = this.pending.get(reply.id);
    if (!call) return;
    this.settle(reply.id, call);
    if (reply.type === 'result') call.resolve(reply);
    else call.reject(new Error(reply.message));
  }

  private settle(id: number, call: Pending): void {
    clearTimeout(call.timer);
    this.pending.delete(id);
    if (this.pending.size === 0) this.worker.unref();
  }

  /** Rejects every pending call with `err`; later calls reject with it too. */
  private fail(err: Error): void {
    this.dead ??= err;
    for (const [id, call] of [...this.pending]) {
      this.settle(id, call);
      call.reject(err);
    }
  }
}

async function boundedTerminate(worker: Worker, ms: number): Promise<void> {
  let timer: NodeJS.Timeout | undefined;
  await Promise.race([worker.terminate().catch(() => undefined), new Promise((resolve) => (timer = setTimeout(resolve, ms)))]);
  clearTimeout(timer);
}
