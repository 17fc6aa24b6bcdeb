/**
 * Which engine computes a training run's gradients (TrainOptions.trainEngine): tfjs itself, or a
 * gradient engine the trainer hands to trainSteps. The checks here turn what an engine cannot train
 * into a usage error that says what to do instead, before any step runs.
 */
import type * as tfl from '@tensorflow/tfjs-layers';
import { UsageError } from '../core/errors.js';
import type { GradientEngine } from '../engines/engine.js';
import { openOnnxGradientEngine } from '../engines/onnxGradients.js';
import type { MethodTraining } from '../methods/method.js';
import { UnsupportedLayerError } from '../models/onnx/layers.js';
import { TRAIN_ENGINES, type TrainEngineName } from './trainOptions.js';

export interface TrainEngineRequest {
  engine: TrainEngineName | undefined;
  model: tfl.LayersModel;
  methodName: string;
  methodRun: MethodTraining;
  /** The per-pixel loss, or 'prior' when the network is a Gaussian prior (its NLL). */
  loss: 'mse' | 'mae' | 'prior';
  threads?: number;
}

/** The gradient engine to train with; undefined: tfjs computes the gradients. */
export async function openTrainEngine(r: TrainEngineRequest): Promise<GradientEngine | undefined> {
  const engine = r.engine ?? 'tfjs';
  if (!TRAIN_ENGINES.includes(engine)) throw new UsageError(`--train-engine must be one of ${TRAIN_ENGINES.join(', ')}, got ${String(engine)}`);
  if (engine === 'tfjs') return undefined;
  const refuse = (why: string): never => {
    throw new UsageError(`--train-engine onnx cannot train this run: ${why}; use --train-engine tfjs`);
  };
  if (!r.methodRun.plainMaskedLoss) refuse(`${r.methodName}'s loss is its own (the ONNX training graph computes the plain masked loss only)`);
  if (r.loss === 'prior') refuse('the network is a Gaussian prior (its NLL is not in the ONNX training graph)');
  try {
    return await openOnnxGradientEngine(r.model, { loss: r.loss as 'mse' | 'mae', ...(r.threads !== undefined ? { threads: r.threads } : {}) });
  } catch (err) {
    if (err instanceof UnsupportedLayerError) refuse(err.message.replace(/^cannot export /, 'no gradient for '));
    throw err;
  }
}
