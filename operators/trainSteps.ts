import { type OperatorFunction, concatMap } from 'rxjs';
import * as tf from '@tensorflow/tfjs-core';
import type * as tfl from '@tensorflow/tfjs-layers';
import type { GradientEngine } from '../engines/engine.js';
import { maskedLoss } from '../models/losses.js';
import type { TrainingBatch } from './batchPatches.js';

export interface StepResult {
  step: number;
  loss: number;
}

/** A loss on (prediction, noisy target, mask of the pixels the network did not see). */
/**
 * A loss over one batch given a way to run the network: most methods run it once on the input
 * (a MaskedLossFn on its prediction); noise2info also runs it on the unmasked patch.
 */
export type BatchLossFn = (apply: (x: tf.Tensor) => tf.Tensor, inputs: tf.Tensor, targets: tf.Tensor, masks: tf.Tensor) => tf.Scalar;

export type MaskedLossFn = (prediction: tf.Tensor, target: tf.Tensor, mask: tf.Tensor) => tf.Scalar;

export interface TrainStepsOptions {
  model: tfl.LayersModel;
  optimizer: tf.Optimizer;
  /** A loss on one prediction, or `{ batch }`: a loss that runs the network itself (noise2info runs it twice). */
  loss: 'mse' | 'mae' | MaskedLossFn | { batch: BatchLossFn };
  /**
   * Computes each step's loss and gradients instead of tfjs (which still applies them with `optimizer`):
   * the loss must then be the engine's, and the extra variables' gradients come from it too.
   */
  gradients?: GradientEngine;
  /** Trained with the network's weights (e.g. a learned noise level); read each step. */
  extraVariables?: () => tf.Variable[];
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
  const batchLoss = toBatchLoss(opts.loss);
  const variables = (): tf.Variable[] => [...opts.model.trainableWeights.map((w) => w.read() as tf.Variable), ...(opts.extraVariables?.() ?? [])];
  const apply = (x: tf.Tensor): tf.Tensor => opts.model.apply(x, { training: true }) as tf.Tensor;
  const engine = opts.gradients;
  return concatMap(async (batch) => {
    if (engine) {
      const weights = opts.model.trainableWeights.map((w) => w.read() as tf.Variable);
      const stateful = opts.model.nonTrainableWeights;
      const values = await Promise.all(weights.map((w) => w.data() as Promise<Float32Array>));
      const stateValues = await Promise.all(stateful.map((w) => w.read().data() as Promise<Float32Array>));
      const { loss, gradients, state, extraGradients } = await engine.gradients(batch, values, stateValues);
      const extras = opts.extraVariables?.() ?? [];
      if (extras.length !== (extraGradients?.length ?? 0)) throw new Error(`trainSteps: ${extras.length} extra variable(s), and the gradient engine gave ${extraGradients?.length ?? 0} gradient(s) for them`);
      const named = [...weights, ...extras].map((w, i) => ({ name: w.name, tensor: tf.tensor(i < weights.length ? gradients[i] : extraGradients![i - weights.length], w.shape) }));
      opts.optimizer.applyGradients(named);
      tf.dispose(named.map((n) => n.tensor));
      stateful.forEach((w, j) => {
        const next = tf.tensor(state[j], w.shape as number[]);
        w.write(next);
        next.dispose();
      });
      const result = { step: batch.step, loss };
      await opts.afterEach?.(result);
      return result;
    }
    const x = tf.tensor(batch.inputs, batch.shape);
    const y = tf.tensor(batch.targets, batch.shape);
    const m = tf.tensor(batch.masks, batch.shape);
    const lossTensor = opts.optimizer.minimize(
      () => batchLoss(apply, x, y, m),
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

/** Any loss TrainStepsOptions takes, as a BatchLossFn. */
export function toBatchLoss(loss: TrainStepsOptions['loss']): BatchLossFn {
  if (typeof loss === 'object') return loss.batch;
  const masked: MaskedLossFn = typeof loss === 'function' ? loss : (p, t, m) => maskedLoss(p, t, m, loss);
  return (apply, x, y, m) => masked(apply(x), y, m);
}
