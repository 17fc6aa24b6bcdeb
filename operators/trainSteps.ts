import { type OperatorFunction, concatMap } from 'rxjs';
import * as tf from '@tensorflow/tfjs-core';
import type * as tfl from '@tensorflow/tfjs-layers';
import { maskedLoss } from '../models/losses.js';
import type { TrainingBatch } from './batchPatches.js';

export interface StepResult {
  step: number;
  loss: number;
}

/** A loss on (prediction, noisy target, mask of the pixels the network did not see). */
export type MaskedLossFn = (prediction: tf.Tensor, target: tf.Tensor, mask: tf.Tensor) => tf.Scalar;

export interface TrainStepsOptions {
  model: tfl.LayersModel;
  optimizer: tf.Optimizer;
  loss: 'mse' | 'mae' | MaskedLossFn;
  /**
   * Runs after each step and before the next one starts: work that reads or saves the model
   * (validation, checkpoints) must not interleave with an update, or it snapshots a half-new state.
   */
  afterEach?: (result: StepResult) => Promise<void>;
}

/**
 * One optimiser step per batch, strictly in order (concatMap): the model is the one stateful thing
 * in the training stream. Reading the loss back each step is the sync point that keeps the
 * producer from racing ahead of the device.
 */
export function trainSteps(opts: TrainStepsOptions): OperatorFunction<TrainingBatch, StepResult> {
  const lossFn: MaskedLossFn = typeof opts.loss === 'function' ? opts.loss : (p, t, m) => maskedLoss(p, t, m, opts.loss as 'mse' | 'mae');
  const variables = (): tf.Variable[] => opts.model.trainableWeights.map((w) => w.read() as tf.Variable);
  return concatMap(async (batch) => {
    const x = tf.tensor(batch.inputs, batch.shape);
    const y = tf.tensor(batch.targets, batch.shape);
    const m = tf.tensor(batch.masks, batch.shape);
    const lossTensor = opts.optimizer.minimize(
      () => lossFn(opts.model.apply(x, { training: true }) as tf.Tensor, y, m),
      true,
      variables(),
    );
    tf.dispose([x, y, m]);
    if (!lossTensor) throw new Error('optimizer returned no loss');
    const loss = (await lossTensor.data())[0];
    lossTensor.dispose();
    const result = { step: batch.step, loss };
    await opts.afterEach?.(result);
    return result;
  });
}
