/**
 * The wasm kernels that cut per-step overhead (backend/kernels/identity.ts, maxPoolGrad.ts,
 * matmulRow.ts)
 * against the cpu backend on seeded random inputs, ties included (pooling after a ReLU sees many
 * equal zeros: which pixel gets the gradient must match).
 */
import { beforeAll, describe, expect, it } from 'vitest';
import * as tf from '@tensorflow/tfjs-core';
// Importing tfjs-layers registers tfjs-core's gradients.
import '@tensorflow/tfjs-layers';
import '@tensorflow/tfjs-backend-cpu';
import '@tensorflow/tfjs-backend-wasm';
import { registerWasmTrainingKernels } from '../backend/kernels/index.js';
import { maxPoolGradFast } from '../backend/kernels/maxPoolGrad.js';
import { batchMatMulRowFast } from '../backend/kernels/matmulRow.js';
import { Rng } from '../core/rng.js';

function randomValues(n: number, seed: number, ties: boolean): Float32Array {
  const rng = new Rng(seed);
  // With ties: a ReLU of coarsely rounded values (many exact zeros and repeated maxima).
  return Float32Array.from({ length: n }, () => (ties ? Math.max(0, Math.round(rng.normal() * 2) / 2) : rng.normal()));
}

async function on<T>(backend: 'cpu' | 'wasm', compute: () => T): Promise<T> {
  await tf.setBackend(backend);
  await tf.ready();
  return compute();
}

interface PoolCase {
  x: [number, number, number, number];
  filter: [number, number];
  strides: [number, number];
  pad: 'valid' | 'same' | number;
  ties: boolean;
}

// Only configurations the shipped wasm MaxPool (the forward pass) gets right: with a non-square
// window or explicit padding it reads out of bounds and corrupts the wasm instance (tfjs 4.22).
const poolCases: PoolCase[] = [
  { x: [2, 8, 8, 3], filter: [2, 2], strides: [2, 2], pad: 'valid', ties: false },
  { x: [2, 8, 8, 5], filter: [2, 2], strides: [2, 2], pad: 'valid', ties: true },
  { x: [2, 9, 7, 4], filter: [3, 3], strides: [2, 2], pad: 'same', ties: true },
  { x: [1, 6, 6, 2], filter: [3, 3], strides: [1, 1], pad: 'same', ties: false },
  { x: [2, 7, 9, 3], filter: [3, 3], strides: [2, 2], pad: 'valid', ties: true },
];

/** dx of sum(maxPool(x) * weights): weights make every window's gradient distinct. */
function poolGrad(c: PoolCase): Float32Array {
  return tf.tidy(() => {
    const n = c.x.reduce((a, b) => a * b, 1);
    const x = tf.tensor4d(randomValues(n, 7, c.ties), c.x);
    const pooled = tf.maxPool(x, c.filter, c.strides, c.pad);
    const weights = tf.tensor(randomValues(pooled.size, 8, false), pooled.shape);
    const dx = tf.grad((input: tf.Tensor) => tf.sum(tf.mul(tf.maxPool(input as tf.Tensor4D, c.filter, c.strides, c.pad), weights)))(x);
    return dx.dataSync().slice() as Float32Array;
  });
}

beforeAll(() => registerWasmTrainingKernels());

describe('MaxPoolGrad on wasm', () => {
  it.each(poolCases)('equals cpu: x $x, filter $filter, strides $strides, pad $pad, ties $ties', async (c) => {
    const expected = await on('cpu', () => poolGrad(c));
    const actual = await on('wasm', () => poolGrad(c));
    const overlapping = c.filter[0] > c.strides[0] || c.filter[1] > c.strides[1];
    let maxDiff = 0;
    let maxRef = 0;
    expected.forEach((e, i) => {
      maxDiff = Math.max(maxDiff, Math.abs(actual[i] - e));
      maxRef = Math.max(maxRef, Math.abs(e));
    });
    expect(maxRef).toBeGreaterThan(0);
    // Non-overlapping windows: one contribution per pixel, exact. Overlapping: float32 vs double sums.
    if (overlapping) expect(maxDiff / maxRef).toBeLessThan(1e-6);
    else expect(maxDiff).toBe(0);
    // The fast path handles the case (it is not left to the shipped kernel).
    await on('wasm', () => {
      const x = tf.tensor4d(randomValues(c.x.reduce((a, b) => a * b, 1), 7, c.ties), c.x);
      const dy = tf.maxPool(x, c.filter, c.strides, c.pad);
      const out = maxPoolGradFast({ inputs: { dy, input: x, output: dy }, backend: tf.backend(), attrs: { filterSize: c.filter, strides: c.strides, pad: c.pad } as unknown as tf.NamedAttrMap });
      expect(out).not.toBeNull();
      tf.engine().makeTensorFromTensorInfo(out!).dispose();
      tf.dispose([x, dy]);
    });
  });
});

describe('Identity on wasm', () => {
  it('shares the buffer, keeps the values, and frees it with the last holder', async () => {
    await on('wasm', () => {
      const backend = tf.backend();
      const buffersBefore = backend.numDataIds();
      const x = tf.tensor(randomValues(1000, 3, false), [10, 100]);
      const expected = x.dataSync().slice();
      const copy = tf.clone(x);
      expect(copy.dataId).toBe(x.dataId);
      expect(backend.refCount(x.dataId)).toBe(2);
      x.dispose();
      expect(Array.from(copy.dataSync())).toEqual(Array.from(expected));
      copy.dispose();
      expect(backend.numDataIds()).toBe(buffersBefore);
    });
  });

  it('a conv + batch-statistics + max-pool gradient (tensors saved through Identity) equals cpu, without leaks', async () => {
    const gradients = (): Float32Array[] =>
      tf.tidy(() => {
        const x = tf.tensor4d(randomValues(2 * 8 * 8 * 2, 4, false), [2, 8, 8, 2]);
        const filter = tf.variable(tf.tensor4d(randomValues(3 * 3 * 2 * 4, 5, false), [3, 3, 2, 4]));
        const { value, grads } = tf.variableGrads(() => {
          const y = tf.relu(tf.conv2d(x, filter as tf.Tensor4D, 1, 'same'));
          const centred = tf.sub(y, tf.mean(y, [0, 1, 2]));
          return tf.sum(tf.square(tf.maxPool(centred as tf.Tensor4D, 2, 2, 'valid'))) as tf.Scalar;
        }, [filter]);
        const result = [value.dataSync().slice() as Float32Array, grads[filter.name].dataSync().slice() as Float32Array];
        filter.dispose();
        return result;
      });
    const expected = await on('cpu', gradients);
    const actual = await on('wasm', () => {
      gradients();
      const buffers = tf.backend().numDataIds();
      const result = gradients();
      expect(tf.backend().numDataIds()).toBe(buffers);
      return result;
    });
    expected.forEach((e, k) => {
      const maxRef = Math.max(...Array.from(e, Math.abs));
      const maxDiff = Math.max(...Array.from(e, (v, i) => Math.abs(actual[k][i] - v)));
      expect(maxRef).toBeGreaterThan(0);
      expect(maxDiff / maxRef).toBeLessThan(1e-4);
    });
  });
});

describe('BatchMatMul of one row on wasm', () => {
  const cases: { a: number[]; b: number[]; fast: boolean }[] = [
    { a: [1, 3000], b: [3000, 32], fast: true },
    { a: [1, 1, 517], b: [1, 517, 7], fast: true },
    { a: [1, 1, 1, 40], b: [40, 5], fast: true },
    // Left to the shipped kernel: two rows, a batch.
    { a: [2, 300], b: [300, 6], fast: false },
    { a: [3, 1, 30], b: [3, 30, 4], fast: false },
  ];
  it.each(cases)('equals cpu: a $a, b $b (fast path: $fast)', async (c) => {
    const size = (shape: number[]): number => shape.reduce((x, y) => x * y, 1);
    const compute = (): { values: Float32Array; shape: number[] } =>
      tf.tidy(() => {
        const product = tf.matMul(tf.tensor(randomValues(size(c.a), 21, false), c.a), tf.tensor(randomValues(size(c.b), 22, false), c.b));
        return { values: product.dataSync().slice() as Float32Array, shape: product.shape };
      });
    const expected = await on('cpu', compute);
    const actual = await on('wasm', compute);
    expect(actual.shape).toEqual(expected.shape);
    const maxRef = Math.max(...Array.from(expected.values, Math.abs));
    const maxDiff = Math.max(...Array.from(expected.values, (v, i) => Math.abs(actual.values[i] - v)));
    expect(maxRef).toBeGreaterThan(0);
    expect(maxDiff / maxRef).toBeLessThan(1e-5);
    await on('wasm', () => {
      const a = tf.tensor(randomValues(size(c.a), 21, false), c.a);
      const b = tf.tensor(randomValues(size(c.b), 22, false), c.b);
      const out = batchMatMulRowFast({ inputs: { a, b }, backend: tf.backend(), attrs: { transposeA: false, transposeB: false } as unknown as tf.NamedAttrMap });
      expect(out !== null).toBe(c.fast);
      if (out !== null) tf.engine().makeTensorFromTensorInfo(out).dispose();
      tf.dispose([a, b]);
    });
  });
});
