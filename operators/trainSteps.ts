import { type OperatorFunction, concatMap } from 'rxjs';
import * as tf from '@tensorflow/tfjs-core';
import type * as tfl from '@tensorflow/tfjs-layers';
import { maskedLoss } from '../models/losses.js';
import type { TrainingBatch } from './batchPatches.js';

export interface StepResult {
  step: number;
  loss: number;
}

export interface TrainStepsOptions {
  model: tfl.LayersModel;
  optimizer: tf.Optimizer;
  loss: 'mse' | 'mae';
}

/**
 * One optimiser step per batch, strictly in order (concatMap): the model is the one stateful thing
 * in the training stream. Reading the loss back each step is the sync point that keeps the
 * producer from racing ahead of the device.
 */
export function trainSteps(opts: TrainStepsOptions): OperatorFunction<TrainingBatch, StepResult> {
  const variables = (): tf.Variable[] => opts.model.trainableWeights.map((w) => w.read() as tf.Variable);
  return concatMap(async (batch) => {
    const x = tf.tensor(batch.inputs, batch.shape);
    const y = tf.tensor(batch.targets, batch.shape);
    const m = tf.tensor(batch.masks, batch.shape);
    const lossTensor = opts.optimizer.minimize(
      () => maskedLoss(opts.model.apply(x, { training: true }) as tf.Tensor, y, m, opts.loss),
      true,
      variables(),
    );
    tf.dispose([x, y, m]);
    if (!lossTensor) throw new Error('optimizer returned no loss');
    const loss = (await lossTensor.data())[0];
    lossTensor.dispose();
    return { step: batch.step, loss };
  });
}
