/**
 * Chooses the inference engine once per run: `--engine auto|onnx|tfjs` and `--device
 * auto|cpu|cuda|tensorrt`.
 *
 * - engine auto: ONNX Runtime when onnxruntime-node loads and the model has an ONNX graph for the
 *   output asked for, else tfjs (the log line says why).
 * - device auto: CUDA where its provider libraries load and an NVIDIA GPU is present, else the CPU.
 *   An explicit device is never replaced by another: it opens, or the run stops with an
 *   EngineUnavailableError (exit 1).
 */
import { UsageError } from '../core/errors.js';
import type { DeviceChoice, EngineChoice, InferenceEngine } from './engine.js';
import { loadOnnxRuntime, openOnnxEngine } from './onnxRuntime.js';
import { type TileModel, tfjsEngine } from './tfjs.js';

export interface EngineRequest {
  engine?: EngineChoice;
  device?: DeviceChoice;
  /** CPU threads (ONNX Runtime intra-op threads); default all cores. */
  threads?: number;
}

/** One network in both forms: the tfjs model, and a way to get its ONNX graph. */
export interface EngineModel {
  /** The network on tfjs tensors (one channel in and out, normalised units). */
  tfjs: TileModel;
  /**
   * The same network as ONNX bytes, and the graph output to fetch (default: its only output).
   * Rejects when it has none (a method or output the exporter does not cover): `--engine onnx`
   * then fails with that message, `auto` runs tfjs.
   */
  onnx: () => Promise<{ bytes: Uint8Array; outputName?: string }>;
}

/** The engine for `model` under `request` (see the file comment). */
export async function openEngine(request: EngineRequest, model: EngineModel): Promise<InferenceEngine> {
  const engine = request.engine ?? 'auto';
  const device = request.device ?? 'auto';
  const wantsGpu = device === 'cuda' || device === 'tensorrt';
  if (engine === 'tfjs') {
    if (device !== 'auto') {
      throw new UsageError(`--device ${device} picks an ONNX Runtime provider; with --engine tfjs the device is the tfjs --backend (leave --device out, or use --engine onnx)`);
    }
    return tfjsEngine(model.tfjs);
  }
  if (engine === 'auto') {
    const reason = await loadOnnxRuntime().then(
      () => null,
      (err: Error) => `onnxruntime-node did not load (${err.message.split('\n')[0]})`,
    );
    // A GPU device is a request for ONNX Runtime: it fails below rather than run elsewhere.
    if (reason !== null && !wantsGpu) return tfjsEngine(model.tfjs, { note: reason });
  }
  let graph: { bytes: Uint8Array; outputName?: string };
  try {
    graph = await model.onnx();
  } catch (err) {
    if (engine === 'auto' && !wantsGpu) return tfjsEngine(model.tfjs, { note: `no ONNX graph: ${(err as Error).message}` });
    throw err;
  }
  return openOnnxEngine({ model: graph.bytes, outputName: graph.outputName, device, threads: request.threads });
}
