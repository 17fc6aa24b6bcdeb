/**
 * One extra JS thread for the JS loops of our wasm kernels (batch norm), working on the threaded
 * wasm build's heap, which is a SharedArrayBuffer. While those loops run, XNNPACK's own threads
 * are idle, so with 2 threads the second core would otherwise do nothing during them.
 *
 * The caller splits its work in two shares, hands one to the helper (`run`), does the other
 * itself, and returns when both are done. Jobs are functions given as source text (they run in the
 * worker, so they must not refer to anything outside themselves); each receives the heap as a
 * Float32Array, a shared Float64Array of scratch values, and its numeric arguments.
 *
 * A job is called as job(heap, ..., heap, scratch, ...numbers): `arrays` copies of the heap view
 * first (the same function, called here on the caller's share, may get separate arrays, as the cpu
 * backend's tensors are), then the scratch, then the numbers.
 *
 * Signalling is by Atomics on a small shared control array (no message per job); the heap and the
 * scratch buffer are sent again through a MessagePort only when they change (the heap grows).
 * The worker is unref'd: it never keeps the process alive. A job that throws in the worker fails
 * the caller's call with that message.
 */
import { MessageChannel, Worker, type MessagePort } from 'node:worker_threads';

/** A self-contained function: Float32Array arguments, then the scratch Float64Array, then numbers. */
export type HeapJob = (...args: never[]) => void;

const MAX_ARGS = 32;
/** Control words: [0] job sequence number posted, [1] sequence number finished, [2] 1 if the job threw. */
const POSTED = 0;
const FINISHED = 1;
const FAILED = 2;
/** Args header: [0] job index, [1] 1 when new buffers wait on the port, [2] heap arrays, [3] numbers. */
const HEADER = 4;

const workerSource = `
const { workerData, receiveMessageOnPort } = require('node:worker_threads');
const { control, args, port, sources } = workerData;
const jobs = sources.map((source) => (0, eval)('(' + source + ')'));
let heap = null;
let scratch = null;
let seen = 0;
for (;;) {
  Atomics.wait(control, ${POSTED}, seen);
  seen = Atomics.load(control, ${POSTED});
  try {
    if (args[1] === 1) {
      const message = receiveMessageOnPort(port).message;
      heap = new Float32Array(message.heap);
      scratch = new Float64Array(message.scratch);
    }
    const arrays = new Array(args[2]).fill(heap);
    jobs[args[0]](...arrays, scratch, ...Array.from(args.subarray(${HEADER}, ${HEADER} + args[3])));
    Atomics.store(control, ${FAILED}, 0);
  } catch (error) {
    Atomics.store(control, ${FAILED}, 1);
  }
  Atomics.store(control, ${FINISHED}, seen);
  Atomics.notify(control, ${FINISHED});
}
`;

export class HeapHelper {
  private readonly worker: Worker;
  private readonly control = new Int32Array(new SharedArrayBuffer(16));
  private readonly args = new Float64Array(new SharedArrayBuffer(8 * (HEADER + MAX_ARGS)));
  private readonly port: MessagePort;
  private sentHeap: SharedArrayBuffer | null = null;
  private scratchBuffer = new SharedArrayBuffer(8 * 1024);
  private sentScratch: SharedArrayBuffer | null = null;
  private sequence = 0;
  private dead: Error | null = null;

  constructor(jobs: readonly HeapJob[]) {
    const channel = new MessageChannel();
    this.port = channel.port1;
    this.port.unref();
    this.worker = new Worker(workerSource, {
      eval: true,
      workerData: { control: this.control, args: this.args, port: channel.port2, sources: jobs.map((job) => job.toString()) },
      transferList: [channel.port2],
    });
    this.worker.unref();
    this.worker.on('error', (error) => {
      this.dead = error;
    });
    this.worker.on('exit', (code) => {
      this.dead ??= new Error(`heap helper thread exited (code ${code})`);
    });
  }

  /** Shared scratch of at least `length` doubles (reallocated, and resent, when too small). */
  scratch(length: number): Float64Array {
    if (this.scratchBuffer.byteLength < 8 * length) this.scratchBuffer = new SharedArrayBuffer(8 * length);
    return new Float64Array(this.scratchBuffer);
  }

  /**
   * Runs job `jobIndex` with `args` on the helper thread and `ownShare` here, and returns when both
   * are done. `heap` is the wasm heap's SharedArrayBuffer as it is now.
   */
  run(jobIndex: number, heap: SharedArrayBuffer, arrays: number, args: readonly number[], ownShare: () => void): void {
    if (this.dead !== null) throw this.dead;
    if (args.length > MAX_ARGS) throw new Error(`heap helper: ${args.length} arguments, at most ${MAX_ARGS}`);
    const resend = heap !== this.sentHeap || this.scratchBuffer !== this.sentScratch;
    if (resend) {
      this.port.postMessage({ heap, scratch: this.scratchBuffer });
      this.sentHeap = heap;
      this.sentScratch = this.scratchBuffer;
    }
    this.args[0] = jobIndex;
    this.args[1] = resend ? 1 : 0;
    this.args[2] = arrays;
    this.args[3] = args.length;
    this.args.set(args, HEADER);
    const sequence = ++this.sequence;
    Atomics.store(this.control, POSTED, sequence);
    Atomics.notify(this.control, POSTED);
    let ownError: unknown = null;
    try {
      ownShare();
    } catch (error) {
      ownError = error;
    }
    // Wait for the helper even when our share threw: it must not write into buffers freed after.
    while (Atomics.load(this.control, FINISHED) !== sequence) {
      Atomics.wait(this.control, FINISHED, Atomics.load(this.control, FINISHED), 1000);
      if (this.dead !== null) throw this.dead;
    }
    if (ownError !== null) throw ownError;
    if (Atomics.load(this.control, FAILED) === 1) {
      this.dead = new Error('heap helper job failed');
      throw this.dead;
    }
  }
}
