/**
 * The worker thread of engines/onnxWorkerSession.ts: owns one ONNX Runtime session and runs the
 * batches posted to it, one after another, so `session.run` (which blocks its thread) never blocks
 * the main thread. Replies with the output's buffer moved to the main thread.
 */
import { parentPort, workerData } from 'node:worker_threads';
import type * as Ort from 'onnxruntime-node';
import { createSession, loadOnnxRuntime } from './onnxRuntime.js';
import { BUSY, type OnnxWorkerData, type OnnxWorkerReply, type OnnxWorkerRequest, STOP } from './onnxWorkerSession.js';

const port = parentPort!;
const { model, device, threads, flags: sharedFlags } = workerData as OnnxWorkerData;
const flags = new Int32Array(sharedFlags ?? new SharedArrayBuffer(8));

function reply(message: OnnxWorkerReply, transfer: ArrayBuffer[] = []): void {
  try {
    port.postMessage(message, transfer);
  } catch {
    // A buffer ONNX Runtime owns may not be transferable: clone it instead.
    port.postMessage(message);
  }
}

let ort: typeof Ort;
let session: Ort.InferenceSession;
try {
  ort = await loadOnnxRuntime();
  session = await createSession(ort, model, device, threads);
  reply({ type: 'ready', inputNames: [...session.inputNames], outputNames: [...session.outputNames] });
} catch (err) {
  reply({ type: 'failed', message: err instanceof Error ? err.message : String(err) });
}

port.on('message', async (request: OnnxWorkerRequest) => {
  if (request.type === 'release') {
    // Closing the port ends the thread once the session is released (never terminate() a thread
    // inside a native ONNX Runtime call: that aborts the whole process).
    await session?.release().catch(() => undefined);
    port.close();
    return;
  }
  // BUSY before STOP is read (see waitOutOfNative in onnxWorkerSession.ts): the process is exiting,
  // so no answer is needed; starting a native run now could abort the process.
  Atomics.store(flags, BUSY, 1);
  if (Atomics.load(flags, STOP) === 1) {
    Atomics.store(flags, BUSY, 0);
    Atomics.notify(flags, BUSY);
    return;
  }
  try {
    const feeds = { [session.inputNames[0]]: new ort.Tensor('float32', request.batch, request.shape) };
    let result: Ort.InferenceSession.OnnxValueMapType;
    try {
      result = await session.run(feeds, [request.outputName]);
    } finally {
      Atomics.store(flags, BUSY, 0);
      Atomics.notify(flags, BUSY);
    }
    const out = result[request.outputName] as Ort.Tensor;
    const data = out.data as Float32Array;
    reply({ type: 'result', id: request.id, data, dims: [...out.dims] }, [data.buffer as ArrayBuffer]);
  } catch (err) {
    reply({ type: 'error', id: request.id, message: `onnx engine: ${err instanceof Error ? err.message : String(err)}` });
  }
});
