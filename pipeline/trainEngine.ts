/**
 * Which engine computes a training run's gradients (TrainOptions.trainEngine): tfjs itself, or a
 * gradient engine the trainer hands to trainSteps. 'auto' (the default) takes ONNX Runtime where the
 * run qualifies and tfjs computes on the CPU (wasm, cpu), and says why when it does not; an explicit
 * 'onnx' that cannot train the run is a usage error that says what to do instead, before any step.
 */
import * as tf from '@tensorflow/tfjs-core';
import type * as tfl from '@tensorflow/tfjs-layers';
import { UsageError } from '../core/errors.js';
import { EngineUnavailableError, type GradientEngine } from '../engines/engine.js';
import { openOnnxGradientEngine } from '../engines/onnxGradients.js';
import type { MethodTraining } from '../methods/method.js';
import { UnsupportedLayerError } from '../models/onnx/layers.js';
import { TRAIN_ENGINE_CHOICES, type TrainEngineChoice } from './trainOptions.js';

export interface TrainEngineRequest {
  engine: TrainEngineChoice | undefined;
  model: tfl.LayersModel;
  methodName: string;
  methodRun: MethodTraining;
  /** The per-pixel loss, or 'prior' when the network is a Gaussian prior (its NLL). */
  loss: 'mse' | 'mae' | 'prior';
  threads?: number;
}

/** The tfjs backends whose arithmetic runs on this machine's CPU: there ONNX Runtime's kernels are faster. */
const CPU_BACKENDS = ['wasm', 'cpu'];

export interface TrainEngineChoiceMade {
  /** Undefined: tfjs computes the gradients. */
  engine?: GradientEngine;
  /** For the log: the engine's line, or why 'auto' kept tfjs. */
  describe: string;
}

export async function openTrainEngine(r: TrainEngineRequest): Promise<TrainEngineChoiceMade> {
  const choice = r.engine ?? 'auto';
  if (!TRAIN_ENGINE_CHOICES.includes(choice)) throw new UsageError(`--train-engine must be one of ${TRAIN_ENGINE_CHOICES.join(', ')}, got ${String(choice)}`);
  if (choice === 'tfjs') return { describe: `gradients on tfjs (${tf.getBackend()})` };
  const unsupported = (why: string): TrainEngineChoiceMade => {
    if (choice === 'onnx') throw new UsageError(`--train-engine onnx cannot train this run: ${why}; use --train-engine tfjs`);
    return { describe: `gradients on tfjs (${tf.getBackend()}): ${why}` };
  };
  if (choice === 'auto' && !CPU_BACKENDS.includes(tf.getBackend())) return { describe: `gradients on tfjs (${tf.getBackend()}, not a CPU backend)` };
  // 3D trains 4.5x faster on onnx, but its im2col buffers hold k^3 copies of a layer's input (GBs at
  // batch 4 of 16x64x64): only on request until the filter gradient is computed tap by tap.
  if (choice === 'auto' && r.model.inputs[0].shape.length === 5) return { describe: `gradients on tfjs (${tf.getBackend()}): 3D takes --train-engine onnx explicitly (memory: docs/engines.md)` };
  if (!r.methodRun.plainMaskedLoss) return unsupported(`${r.methodName}'s loss is its own (the ONNX training graph computes the plain masked loss only)`);
  if (r.loss === 'prior') return unsupported('the network is a Gaussian prior (its NLL is not in the ONNX training graph)');
  try {
    const engine = await openOnnxGradientEngine(r.model, { loss: r.loss, ...(r.threads !== undefined ? { threads: r.threads } : {}) });
    return { engine, describe: engine.describe() };
  } catch (err) {
    if (err instanceof UnsupportedLayerError) return unsupported(err.message.replace(/^cannot export /, 'no gradient for '));
    if (err instanceof EngineUnavailableError && choice === 'auto') return { describe: `gradients on tfjs (${tf.getBackend()}): ${err.message}` };
    throw err;
  }
}
