/**
 * The fused batch-norm kernels (backend/kernels/batchNorm.ts) on wasm and cpu against batch
 * normalisation composed from plain tfjs ops on the cpu backend (tf.moments, sub, div, sqrt...,
 * gradients by autodiff), on seeded random inputs: forward, statistics and all three gradients.
 * Shapes include row counts that are not a multiple of the 4-row blocks, one channel, one row
 * and a large offset (the shifted sums must not cancel).
 */
import { beforeAll, describe, expect, it } from 'vitest';
import * as tf from '@tensorflow/tfjs-core';
import '@tensorflow/tfjs-layers';
import '@tensorflow/tfjs-backend-cpu';
import '@tensorflow/tfjs-backend-wasm';
import { registerWasmTrainingKernels } from '../backend/kernels/index.js';
import { BATCH_NORM_TRAIN_GRAD_KERNEL, BATCH_NORM_TRAIN_KERNEL, batchNormKernelsAvailable, setFusedBatchNorm } from '../backend/kernels/batchNorm.js';
import { batchNormTraining, ChannelBatchNorm } from '../models/layers.js';
import { Rng } from '../core/rng.js';
import { maxRelativeError } from './fixtures/relativeError.js';

const epsilon = 1e-3;

function values(n: number, seed: number, offset = 0, scale = 1): Float32Array {
  const rng = new Rng(seed);
  return Float32Array.from({ length: n }, () => offset + scale * rng.normal());
}

interface Case {
  shape: number[];
  offset: number;
  scale: number;
}

const cases: Case[] = [
  { shape: [7, 3], offset: 0, scale: 1 },
  { shape: [2, 5, 3, 5], offset: 3, scale: 2 },
  { shape: [2, 3, 4, 5, 2], offset: -1, scale: 0.5 },
  { shape: [1, 1, 1, 6], offset: 0.5, scale: 1 },
  { shape: [3, 5, 7, 1], offset: 0, scale: 3 },
  { shape: [2, 8, 8, 32], offset: 1000, scale: 1 },
];

/** y, mean, variance, dx, dgamma, dbeta of sum(bn(x) * weight), as flat arrays. */
function batchNormResults(c: Case, bn: (x: tf.Tensor, g: tf.Tensor, b: tf.Tensor) => { y: tf.Tensor; mean: tf.Tensor; variance: tf.Tensor }): Float32Array[] {
  return tf.tidy(() => {
    const size = c.shape.reduce((a, b) => a * b, 1);
    const channels = c.shape[c.shape.length - 1];
    const x = tf.tensor(values(size, 1, c.offset, c.scale), c.shape);
    const gamma = tf.tensor1d(values(channels, 2, 1, 0.3));
    const beta = tf.tensor1d(values(channels, 3));
    const weight = tf.tensor(values(size, 4), c.shape);
    // batchNormTraining keeps its statistics out of tidy scopes (the layer disposes them).
    const forward = bn(x, gamma, beta);
    const results = [forward.y, forward.mean, forward.variance].map((t) => t.dataSync() as Float32Array);
    tf.dispose([forward.mean, forward.variance]);
    const yOnly = (xi: tf.Tensor, g: tf.Tensor, b: tf.Tensor): tf.Tensor => {
      const r = bn(xi, g, b);
      tf.dispose([r.mean, r.variance]);
      return r.y;
    };
    const grads = tf.grads((xi: tf.Tensor, g: tf.Tensor, b: tf.Tensor) => tf.sum(tf.mul(yOnly(xi, g, b), weight)))([x, gamma, beta]);
    return [...results, ...grads.map((t) => t.dataSync() as Float32Array)];
  });
}

function composed(x: tf.Tensor, gamma: tf.Tensor, beta: tf.Tensor): { y: tf.Tensor; mean: tf.Tensor; variance: tf.Tensor } {
  const { mean, variance } = tf.moments(x, x.shape.slice(0, -1).map((_, i) => i));
  return { y: tf.add(tf.mul(tf.div(tf.sub(x, mean), tf.sqrt(tf.add(variance, epsilon))), gamma), beta), mean, variance };
}

function fused(x: tf.Tensor, gamma: tf.Tensor, beta: tf.Tensor): { y: tf.Tensor; mean: tf.Tensor; variance: tf.Tensor } {
  return batchNormTraining(x, gamma, beta, epsilon);
}

const labels = ['y', 'mean', 'variance', 'dx', 'dgamma', 'dbeta'];

beforeAll(() => registerWasmTrainingKernels());

describe('fused batch-norm kernels vs tfjs ops on cpu', () => {
  for (const c of cases) {
    it(`shape [${c.shape}], values ${c.offset} + ${c.scale} N(0,1): forward, statistics and gradients on wasm and cpu`, async () => {
      await tf.setBackend('cpu');
      const expected = batchNormResults(c, composed);
      for (const backend of ['wasm', 'cpu'] as const) {
        await tf.setBackend(backend);
        expect(batchNormKernelsAvailable()).toBe(true);
        const before = tf.memory().numTensors;
        const actual = batchNormResults(c, fused);
        expect(tf.memory().numTensors).toBe(before);
        // dx of a large-offset input is a small difference of large terms in the float32 reference itself.
        const tolerance = c.offset >= 100 ? 2e-3 : 1e-4;
        actual.forEach((a, i) => expect(maxRelativeError(a, expected[i], 1), `${backend} ${labels[i]}`).toBeLessThan(tolerance));
      }
    });
  }

  it('the kernels run (and no composed op does) on wasm and cpu', async () => {
    for (const backend of ['wasm', 'cpu'] as const) {
      await tf.setBackend(backend);
      const profile = await tf.profile(() => batchNormResults(cases[1], fused));
      const names = new Set(profile.kernelNames);
      expect(names.has(BATCH_NORM_TRAIN_KERNEL)).toBe(true);
      expect(names.has(BATCH_NORM_TRAIN_GRAD_KERNEL)).toBe(true);
      expect(names.has('Rsqrt')).toBe(false);
    }
  });

  it('repeats bit for bit, and equals the composed fallback of setFusedBatchNorm(false) within tolerance', async () => {
    await tf.setBackend('wasm');
    const first = batchNormResults(cases[2], fused);
    const second = batchNormResults(cases[2], fused);
    first.forEach((a, i) => expect(Array.from(second[i])).toEqual(Array.from(a)));
    setFusedBatchNorm(false);
    try {
      expect(batchNormKernelsAvailable()).toBe(false);
      const fallback = batchNormResults(cases[2], fused);
      fallback.forEach((a, i) => expect(maxRelativeError(first[i], a, 1), labels[i]).toBeLessThan(1e-4));
    } finally {
      setFusedBatchNorm(true);
    }
  });

  it('ChannelBatchNorm in training updates its moving statistics from the kernel outputs', async () => {
    await tf.setBackend('wasm');
    const layer = new ChannelBatchNorm({ momentum: 0.5 });
    const shape = [3, 4, 5, 6];
    const x = tf.tensor(values(360, 9, 2, 3), shape);
    layer.apply(x, { training: true }) as tf.Tensor;
    const { mean, variance } = tf.moments(x, [0, 1, 2]);
    const [movingMean, movingVariance] = layer.getWeights().slice(2).map((w) => w.dataSync());
    const expectedMean = (mean.dataSync() as Float32Array).map((m) => 0.5 * m);
    const expectedVariance = (variance.dataSync() as Float32Array).map((v) => 0.5 + 0.5 * v);
    expect(maxRelativeError(movingMean as Float32Array, expectedMean, 1)).toBeLessThan(1e-5);
    expect(maxRelativeError(movingVariance as Float32Array, expectedVariance, 1)).toBeLessThan(1e-5);
    tf.dispose([x, mean, variance]);
    layer.dispose();
  });

  it('rejects a per-channel input of the wrong size', async () => {
    await tf.setBackend('wasm');
    const x = tf.zeros([2, 3]);
    const gamma = tf.ones([4]);
    expect(() => tf.engine().runKernel(BATCH_NORM_TRAIN_KERNEL, { x, gamma, beta: gamma }, { epsilon })).toThrow(/gamma has shape \[4\]/);
    tf.dispose([x, gamma]);
  });
});
