/**
 * The TensorFlow.js engine: a LayersModel (or a function of tensors, e.g. a prior network's
 * posterior) run on the process's tfjs backend. The reference the ONNX engine is held to, the
 * engine of training-time validation, and the fallback where ONNX Runtime does not load.
 */
import * as tf from '@tensorflow/tfjs-core';
import type { LayersModel } from '@tensorflow/tfjs-layers';
// backend/wasm-threads.ts loads it anyway wherever the wasm backend runs.
import { getThreadsCount } from '@tensorflow/tfjs-backend-wasm';
import { assertSameShape, type InferenceEngine, isInferenceEngine } from './engine.js';
import type { TileSpec } from '../operators/tileGrid.js';

/**
 * A network on NHWC / NDHWC float32 tensors with one channel in and out, keeping the spatial shape;
 * a function also gets the batch's tiles (a sampling denoiser seeds each from its position).
 */
export type TileModel = LayersModel | ((x: tf.Tensor, tiles?: readonly TileSpec[]) => tf.Tensor);

/** Runs `model` in inference mode (batch norm uses its moving statistics). */
export function applyModel(model: TileModel, x: tf.Tensor, tiles?: readonly TileSpec[]): tf.Tensor {
  if (typeof model === 'function') return model(x, tiles);
  const y = model.predict(x);
  if (Array.isArray(y)) throw new Error(`predictTiles: the model has ${y.length} outputs; one is expected`);
  return y;
}

export interface TfjsEngineOptions {
  /** Frees the model on dispose (default false: the caller owns it). */
  ownsModel?: LayersModel;
  /** Why tfjs was chosen when another engine was possible (for the log line). */
  note?: string;
}

/** Wraps a tfjs model as an engine on the active tfjs backend. */
export function tfjsEngine(model: TileModel, opts: TfjsEngineOptions = {}): InferenceEngine {
  const backend = tf.getBackend() ?? 'none';
  // The wasm backend reports its thread count; the others compute on their own pools.
  const threads = backend === 'wasm' ? wasmThreads() : 1;
  return {
    name: 'tfjs',
    provider: backend,
    threads,
    describe: () => `engine tfjs (backend ${backend}, tfjs ${tf.version_core})${opts.note ? `; ${opts.note}` : ''}`,
    async predict(batch, shape, tiles) {
      const y = tf.tidy(() => applyModel(model, tf.tensor(batch, [...shape], 'float32'), tiles));
      try {
        assertSameShape('predictTiles', shape, y.shape, y.size);
        // data() of a fresh tensor is a new array (a copy out of the backend), so the caller owns it.
        return (await y.data()) as Float32Array;
      } finally {
        y.dispose();
      }
    },
    async dispose() {
      opts.ownsModel?.dispose();
    },
  };
}

function wasmThreads(): number {
  try {
    return getThreadsCount();
  } catch {
    return 1;
  }
}

/** What the tiling operators accept: an engine, or a tfjs model that they run through tfjsEngine. */
export type Predictor = TileModel | InferenceEngine;

/** The engine of a Predictor: itself, or the tfjs engine around a tfjs model. */
export function asEngine(predictor: Predictor): InferenceEngine {
  return isInferenceEngine(predictor) ? predictor : tfjsEngine(predictor);
}
