/**
 * FusedAdam (models/optimizer.ts) against tf.train.adam on a small conv net with batch norm, on
 * cpu and wasm: the same weights after several steps (within 1e-6 relative; on these backends
 * bit for bit is expected), learning-rate changes honoured, the fused kernel actually used, no
 * tensors leaked, shared buffers left alone, and checkpoints (tfjs's optimizer-weights format)
 * that resume exactly.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import * as tf from '@tensorflow/tfjs-core';
import * as tfl from '@tensorflow/tfjs-layers';
import '@tensorflow/tfjs-backend-cpu';
import '@tensorflow/tfjs-backend-wasm';
import { registerWasmTrainingKernels } from '../backend/kernels/index.js';
import { adamUpdateInto } from '../backend/kernels/fusedAdam.js';
import { Rng } from '../core/rng.js';
import { createAdam, FusedAdam, type NamedTensor } from '../models/optimizer.js';
import { maxRelativeError } from './fixtures/relativeError.js';

const tolerance = 1e-6;
const batchShape = [4, 8, 8, 1];

function randomValues(n: number, rng: Rng): Float32Array {
  return Float32Array.from({ length: n }, () => rng.normal());
}

interface Problem {
  model: tfl.LayersModel;
  initial: Float32Array[];
  batches: { x: Float32Array; y: Float32Array }[];
}

function makeProblem(seed: number, steps: number): Problem {
  const input = tfl.input({ shape: batchShape.slice(1) });
  let h = tfl.layers.conv2d({ filters: 6, kernelSize: 3, padding: 'same', kernelInitializer: tfl.initializers.glorotNormal({ seed }) }).apply(input) as tfl.SymbolicTensor;
  h = tfl.layers.batchNormalization().apply(h) as tfl.SymbolicTensor;
  h = tfl.layers.activation({ activation: 'relu' }).apply(h) as tfl.SymbolicTensor;
  const output = tfl.layers.conv2d({ filters: 1, kernelSize: 1, kernelInitializer: tfl.initializers.glorotNormal({ seed: seed + 1 }) }).apply(h) as tfl.SymbolicTensor;
  const model = tfl.model({ inputs: input, outputs: output });
  const rng = new Rng(seed);
  // Non-zero biases and batch-norm parameters so that every variable starts off generic.
  model.setWeights(model.getWeights().map((w) => tf.tensor(randomValues(w.size, rng), w.shape)));
  const initial = model.getWeights().map((w) => w.dataSync().slice() as Float32Array);
  const n = batchShape.reduce((a, b) => a * b, 1);
  const batches = Array.from({ length: steps }, () => ({ x: randomValues(n, rng), y: randomValues(n, rng) }));
  return { model, initial, batches };
}

function resetWeights(p: Problem): void {
  const tensors = p.model.getWeights().map((w, i) => tf.tensor(p.initial[i], w.shape));
  p.model.setWeights(tensors);
  tf.dispose(tensors);
}

function trainableVariables(model: tfl.LayersModel): tf.Variable[] {
  return model.trainableWeights.map((w) => w.read() as tf.Variable);
}

/** Steps `from..to-1` of the problem's batches; `learningRateAt` may change the rate before a step. */
function train(p: Problem, optimizer: tf.Optimizer, from: number, to: number, learningRateAt?: (step: number) => number | undefined): void {
  const variables = trainableVariables(p.model);
  for (let step = from; step < to; step++) {
    const lr = learningRateAt?.(step);
    if (lr !== undefined) (optimizer as unknown as { learningRate: number }).learningRate = lr;
    const { x, y } = p.batches[step];
    tf.tidy(() => {
      const xs = tf.tensor(x, batchShape);
      const ys = tf.tensor(y, batchShape);
      optimizer.minimize(() => tf.losses.meanSquaredError(ys, p.model.apply(xs, { training: true }) as tf.Tensor) as tf.Scalar, false, variables);
    });
  }
}

function weightsOf(model: tfl.LayersModel): Float32Array[] {
  return model.getWeights().map((w) => w.dataSync().slice() as Float32Array);
}

async function momentsOf(optimizer: tf.Optimizer): Promise<Float32Array[]> {
  const named = await optimizer.getWeights();
  return named.slice(1).map((n) => n.tensor.dataSync().slice() as Float32Array);
}

describe('adamUpdateInto', () => {
  it('equals the textbook bias-corrected Adam step (double precision) to float32 accuracy', () => {
    const rng = new Rng(5);
    const n = 257;
    const value = randomValues(n, rng);
    const gradient = randomValues(n, rng);
    const m = randomValues(n, rng).map((x) => x * 0.1);
    const v = randomValues(n, rng).map((x) => x * x * 0.01);
    const [b1, b2, lr, eps, t] = [0.9, 0.999, 0.01, 1e-7, 3];
    const expectedM = Array.from(m, (mi, i) => b1 * mi + (1 - b1) * gradient[i]);
    const expectedV = Array.from(v, (vi, i) => b2 * vi + (1 - b2) * gradient[i] ** 2);
    const expected = Array.from(value, (x, i) => x - (lr * (expectedM[i] / (1 - b1 ** t))) / (Math.sqrt(expectedV[i] / (1 - b2 ** t)) + eps));
    const updated = new Float32Array(n);
    const f = Math.fround;
    adamUpdateInto(value, gradient, m, v, updated, {
      beta1: f(b1),
      beta2: f(b2),
      oneMinusBeta1: f(1 - b1),
      oneMinusBeta2: f(1 - b2),
      biasCorrection1: f(1 - b1 ** t),
      biasCorrection2: f(1 - b2 ** t),
      epsilon: f(eps),
      negLearningRate: f(-lr),
    });
    expect(maxRelativeError([updated, m, v], [Float32Array.from(expected), Float32Array.from(expectedM), Float32Array.from(expectedV)])).toBeLessThan(1e-5);
    // The step moved every value.
    expect(updated.every((x, i) => x !== value[i])).toBe(true);
  });
});

for (const backend of ['cpu', 'wasm'] as const) {
  describe(`FusedAdam on ${backend}`, () => {
    beforeAll(async () => {
      registerWasmTrainingKernels();
      await tf.setBackend(backend);
      await tf.ready();
    });
    afterAll(() => tf.disposeVariables());

    it('equals tf.train.adam after 6 steps, using the fused kernel for every variable and leaking nothing', async () => {
      const p = makeProblem(11, 6);
      const reference = tf.train.adam(0.01);
      resetWeights(p);
      train(p, reference, 0, 6);
      const expectedWeights = weightsOf(p.model);
      const expectedMoments = await momentsOf(reference);

      const fused = createAdam(0.01);
      resetWeights(p);
      train(p, fused, 0, 1);
      const tensorsAfterFirstStep = tf.memory().numTensors;
      train(p, fused, 1, 6);
      expect(tf.memory().numTensors).toBe(tensorsAfterFirstStep);
      expect(fused.lastStepPaths).toEqual({ fused: trainableVariables(p.model).length, ops: 0 });
      expect(fused.iterations).toBe(6);
      expect(maxRelativeError(weightsOf(p.model), expectedWeights)).toBeLessThan(tolerance);
      expect(maxRelativeError(await momentsOf(fused), expectedMoments)).toBeLessThan(tolerance);
      // The weights moved: a do-nothing optimizer would not pass.
      expect(maxRelativeError(weightsOf(p.model), p.initial)).toBeGreaterThan(1e-3);
      // Same checkpoint layout as tfjs: iteration count, then first moments, then second moments.
      expect((await fused.getWeights()).map((w) => w.name)).toEqual((await reference.getWeights()).map((w) => w.name));
      reference.dispose();
      fused.dispose();
      p.model.dispose();
    });

    it('the tfjs-ops path (fused: false) equals tf.train.adam too', async () => {
      const p = makeProblem(12, 4);
      const reference = tf.train.adam(0.02);
      resetWeights(p);
      train(p, reference, 0, 4);
      const expected = weightsOf(p.model);
      const unfused = new FusedAdam({ learningRate: 0.02, fused: false });
      resetWeights(p);
      train(p, unfused, 0, 4);
      expect(unfused.lastStepPaths.fused).toBe(0);
      expect(maxRelativeError(weightsOf(p.model), expected)).toBeLessThan(tolerance);
      reference.dispose();
      unfused.dispose();
      p.model.dispose();
    });

    it('honours learning-rate changes between steps', async () => {
      const p = makeProblem(13, 6);
      const schedule = (step: number): number | undefined => (step === 3 ? 0.005 : step === 5 ? 0.0025 : undefined);
      const reference = tf.train.adam(0.01);
      resetWeights(p);
      train(p, reference, 0, 6, schedule);
      const expected = weightsOf(p.model);

      const fused = createAdam(0.01);
      resetWeights(p);
      train(p, fused, 0, 6, schedule);
      expect(fused.learningRate).toBe(0.0025);
      expect(maxRelativeError(weightsOf(p.model), expected)).toBeLessThan(tolerance);

      const constant = createAdam(0.01);
      resetWeights(p);
      train(p, constant, 0, 6);
      expect(maxRelativeError(weightsOf(p.model), expected)).toBeGreaterThan(1e-4);
      [reference, fused, constant].forEach((o) => o.dispose());
      p.model.dispose();
    });

    it('leaves buffers shared with other tensors untouched', async () => {
      const p = makeProblem(14, 2);
      resetWeights(p);
      const fused = createAdam(0.01);
      train(p, fused, 0, 1);
      const variables = trainableVariables(p.model);
      // tf.clone shares the buffer of its input on these backends.
      const weightClone = tf.clone(variables[0]);
      const weightBefore = weightClone.dataSync().slice();
      const firstMoment = (fused as unknown as { firstMoments: { variable: tf.Variable }[] }).firstMoments[0].variable;
      const momentClone = tf.clone(firstMoment);
      const momentBefore = momentClone.dataSync().slice();
      train(p, fused, 1, 2);
      expect(Array.from(weightClone.dataSync())).toEqual(Array.from(weightBefore));
      expect(Array.from(momentClone.dataSync())).toEqual(Array.from(momentBefore));
      expect(Array.from(variables[0].dataSync())).not.toEqual(Array.from(weightBefore));
      expect(Array.from(firstMoment.dataSync())).not.toEqual(Array.from(momentBefore));
      tf.dispose([weightClone, momentClone]);

      // setWeights adopts the caller's tensors; a step while the caller still holds them copies first.
      const given: NamedTensor[] = (await fused.getWeights()).map((w) => ({ name: w.name, tensor: tf.tensor(w.tensor.dataSync().slice(), w.tensor.shape, w.tensor.dtype) }));
      const givenBefore = given.map((g) => Array.from(g.tensor.dataSync()));
      const adopting = createAdam(0.01);
      await adopting.setWeights(given);
      train(p, adopting, 0, 1);
      expect(given.map((g) => Array.from(g.tensor.dataSync()))).toEqual(givenBefore);
      expect((await momentsOf(adopting)).map((m) => Array.from(m))).not.toEqual(givenBefore.slice(1));
      tf.dispose(given.map((g) => g.tensor));
      adopting.dispose();
      fused.dispose();
      p.model.dispose();
    });

    it('resumes from a checkpoint exactly, and reads checkpoints of tf.train.adam', async () => {
      const p = makeProblem(15, 8);
      const uninterrupted = createAdam(0.01);
      resetWeights(p);
      train(p, uninterrupted, 0, 8, (s) => (s === 5 ? 0.004 : undefined));
      const expected = weightsOf(p.model);
      const expectedMoments = await momentsOf(uninterrupted);
      uninterrupted.dispose();

      // As pipeline/train.ts checkpoints: encodeWeights of getWeights, decodeWeights, setWeights.
      const checkpoint = async (optimizer: tf.Optimizer): Promise<{ specs: tf.io.WeightsManifestEntry[]; data: ArrayBuffer; weights: Float32Array[] }> => {
        const encoded = await tf.io.encodeWeights(await optimizer.getWeights());
        return { specs: encoded.specs, data: tf.io.CompositeArrayBuffer.join(encoded.data), weights: weightsOf(p.model) };
      };
      const restore = async (saved: Awaited<ReturnType<typeof checkpoint>>, optimizer: tf.Optimizer): Promise<void> => {
        const decoded = tf.io.decodeWeights(saved.data, saved.specs);
        const named: NamedTensor[] = saved.specs.map((s) => ({ name: s.name, tensor: decoded[s.name] }));
        await optimizer.setWeights(named);
        tf.dispose(named.map((n) => n.tensor));
        const tensors = p.model.getWeights().map((w, i) => tf.tensor(saved.weights[i], w.shape));
        p.model.setWeights(tensors);
        tf.dispose(tensors);
      };

      const first = createAdam(0.01);
      resetWeights(p);
      train(p, first, 0, 4);
      const saved = await checkpoint(first);
      first.dispose();
      const resumed = createAdam(0.01);
      await restore(saved, resumed);
      expect(resumed.iterations).toBe(4);
      train(p, resumed, 4, 8, (s) => (s === 5 ? 0.004 : undefined));
      expect(maxRelativeError(weightsOf(p.model), expected)).toBe(0);
      expect(maxRelativeError(await momentsOf(resumed), expectedMoments)).toBe(0);
      resumed.dispose();

      // A checkpoint written by tf.train.adam continues under FusedAdam.
      const tfjsFirst = tf.train.adam(0.01);
      resetWeights(p);
      train(p, tfjsFirst, 0, 4);
      const tfjsSaved = await checkpoint(tfjsFirst);
      tfjsFirst.dispose();
      const fromTfjs = createAdam(0.01);
      await restore(tfjsSaved, fromTfjs);
      train(p, fromTfjs, 4, 8, (s) => (s === 5 ? 0.004 : undefined));
      expect(maxRelativeError(weightsOf(p.model), expected)).toBeLessThan(tolerance);
      fromTfjs.dispose();
      p.model.dispose();
    });
  });
}
