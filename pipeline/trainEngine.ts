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
import type { MethodTraining, PlainLossRewrite } from '../methods/method.js';
import type { MaskedLossFn } from '../operators/trainSteps.js';
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
  /** Variables trained with the weights (a learned noise level): the loss on the output gives their gradients. */
  extraVariables?: () => tf.Variable[];
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
  // The masked loss in the graph where the loss is (or rewrites to) it; else tfjs computes the loss on
  // the output ONNX Runtime computed, and ONNX Runtime the gradient back through the network.
  const form = r.methodRun.plainMaskedLoss;
  const graphLoss = r.loss !== 'prior' && form !== undefined && (form === 'as-is' || form.loss === r.loss) ? r.loss : undefined;
  const outputLoss = r.methodRun.outputLoss;
  if (graphLoss === undefined && outputLoss === undefined) {
    if (form === undefined) return unsupported(`${r.methodName}'s loss is its own (the ONNX training graph computes the plain masked loss, or takes the gradient of a loss on one output)`);
    return unsupported(`${r.methodName}'s loss is a masked loss only with --loss ${form === 'as-is' ? 'mse or mae' : form.loss}`);
  }
  const threads = r.threads !== undefined ? { threads: r.threads } : {};
  try {
    if (graphLoss === undefined) {
      const engine = await openOnnxGradientEngine(r.model, { loss: 'outside', ...threads });
      return { engine: withOutputLoss(engine, outputLoss!, r.extraVariables ?? (() => [])), describe: `${engine.describe()}, the loss on the output on tfjs` };
    }
    const engine = await openOnnxGradientEngine(r.model, { loss: graphLoss, ...threads });
    return { engine: form === 'as-is' ? engine : withLossRewrite(engine, form!), describe: engine.describe() };
  } catch (err) {
    if (err instanceof UnsupportedLayerError) return unsupported(err.message.replace(/^cannot export /, 'no gradient for '));
    if (err instanceof EngineUnavailableError && choice === 'auto') return { describe: `gradients on tfjs (${tf.getBackend()}): ${err.message}` };
    throw err;
  }
}

/**
 * The engine computing a method's own loss through its rewrite as masked losses: the forward passes
 * first (their state updates first, as on tfjs), then each term's loss and gradients, scaled and summed.
 */
function withLossRewrite(engine: GradientEngine, rewrite: PlainLossRewrite): GradientEngine {
  return {
    ...engine,
    async gradients(batch, weights, state) {
      let current = [...state];
      const predictions: Float32Array[] = [];
      for (const inputs of rewrite.forwardInputs(batch)) {
        const forward = await engine.forward(inputs, batch.shape, weights, current);
        predictions.push(forward.prediction);
        current = forward.state;
      }
      const { terms, offset } = rewrite.rewrite(batch, predictions);
      let loss = offset;
      const gradients = weights.map((w) => new Float32Array(w.length));
      for (const term of terms) {
        const out = await engine.gradients(term.batch, weights, current);
        if (!term.repeatsForward) current = out.state;
        loss += term.scale * out.loss;
        out.gradients.forEach((g, j) => {
          const sum = gradients[j];
          for (let i = 0; i < g.length; i++) sum[i] += term.scale * g[i];
        });
      }
      return { loss, gradients, state: current };
    },
  };
}

/**
 * The engine computing a loss that tfjs computes on the network's output (a Gaussian prior's NLL and
 * its learned noise level, PN2V's likelihood): the forward pass on ONNX Runtime, the loss and its
 * gradient with respect to the output (and the extra variables) on tfjs, then the backward pass from
 * that gradient on ONNX Runtime. It costs one forward pass more than a masked loss in the graph.
 */
function withOutputLoss(engine: GradientEngine, loss: MaskedLossFn, extraVariables: () => tf.Variable[]): GradientEngine {
  const vjp = engine.vjp?.bind(engine);
  if (!vjp) throw new Error('train engine: the gradient engine has no vjp');
  return {
    ...engine,
    async gradients(batch, weights, state) {
      const forward = await engine.forward(batch.inputs, batch.shape, weights, state);
      const spatial = batch.shape.slice(0, -1);
      const channels = forward.prediction.length / spatial.reduce((a, b) => a * b, 1);
      const extras = extraVariables();
      const output = tf.tensor(forward.prediction, [...spatial, channels]);
      const prediction = tf.variable(output);
      output.dispose();
      const targets = tf.tensor(batch.targets, [...batch.shape]);
      const masks = tf.tensor(batch.masks, [...batch.shape]);
      const { value, grads } = tf.variableGrads(() => loss(prediction, targets, masks), [prediction, ...extras]);
      const [lossValue, dPrediction, ...extraGradients] = (await Promise.all([value, grads[prediction.name], ...extras.map((v) => grads[v.name])].map((t) => t.data()))) as Float32Array[];
      tf.dispose([prediction, targets, masks, value, ...Object.values(grads)]);
      // The backward pass repeats the forward one on the same batch: the state is the forward pass's.
      const backward = await vjp(batch.inputs, batch.shape, dPrediction, weights, state, forward.noise);
      return { loss: lossValue[0], gradients: backward.gradients, state: forward.state, extraGradients };
    },
  };
}
