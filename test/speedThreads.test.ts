/**
 * The batch-norm kernels on the threaded wasm build with 2 threads, where they hand half of the
 * rows to a helper JS thread (backend/kernels/heapHelper.ts): the same bits as with the helper
 * off (both halves on this thread), within float32 tolerance of tfjs ops on the cpu backend, and
 * the helper itself: runs a job on the shared heap, survives a heap that grows, reports a
 * failing job.
 */
import { beforeAll, describe, expect, it } from 'vitest';
import * as tf from '@tensorflow/tfjs-core';
import '@tensorflow/tfjs-layers';
import '@tensorflow/tfjs-backend-cpu';
import { initBackend } from '../backend/select.js';
import { batchNormHelperCalls, setBatchNormHelperThread } from '../backend/kernels/batchNorm.js';
import { HeapHelper } from '../backend/kernels/heapHelper.js';
import { batchNormTraining } from '../models/layers.js';
import { Rng } from '../core/rng.js';

function values(n: number, seed: number, offset = 0): Float32Array {
  const rng = new Rng(seed);
  return Float32Array.from({ length: n }, () => offset + rng.normal());
}

/** y, mean, variance and the three gradients of sum(bn(x) * weight), bits as numbers. */
function results(shape: number[], bn: (x: tf.Tensor, g: tf.Tensor, b: tf.Tensor) => { y: tf.Tensor; mean: tf.Tensor; variance: tf.Tensor; keep: boolean }): Float32Array[] {
  return tf.tidy(() => {
    const size = shape.reduce((a, b) => a * b, 1);
    const channels = shape[shape.length - 1];
    const x = tf.tensor(values(size, 1, 2), shape);
    const gamma = tf.tensor1d(values(channels, 2, 1));
    const beta = tf.tensor1d(values(channels, 3));
    const weight = tf.tensor(values(size, 4), shape);
    const forward = bn(x, gamma, beta);
    const out = [forward.y, forward.mean, forward.variance].map((t) => Float32Array.from(t.dataSync()));
    if (forward.keep) tf.dispose([forward.mean, forward.variance]);
    const grads = tf.grads((a: tf.Tensor, g: tf.Tensor, b: tf.Tensor) => {
      const r = bn(a, g, b);
      if (r.keep) tf.dispose([r.mean, r.variance]);
      return tf.sum(tf.mul(r.y, weight));
    })([x, gamma, beta]);
    return [...out, ...grads.map((t) => Float32Array.from(t.dataSync()))];
  });
}

const fused = (x: tf.Tensor, g: tf.Tensor, b: tf.Tensor) => ({ ...batchNormTraining(x, g, b, 1e-3), keep: true });
const composed = (x: tf.Tensor, g: tf.Tensor, b: tf.Tensor) => {
  const { mean, variance } = tf.moments(x, x.shape.slice(0, -1).map((_, i) => i));
  return { y: tf.add(tf.mul(tf.div(tf.sub(x, mean), tf.sqrt(tf.add(variance, 1e-3))), g), b), mean, variance, keep: false };
};

beforeAll(async () => {
  const info = await initBackend({ backend: 'wasm', threads: 2 });
  expect(info.threads).toBe(2);
});

describe('batch norm with the helper thread (wasm, 2 threads)', () => {
  // Above the helper's threshold (65536 values); rows not a multiple of 8; channels not a multiple of 4.
  for (const shape of [
    [4, 32, 32, 32],
    [3, 37, 29, 21],
  ]) {
    it(`[${shape}]: helper on and off give the same bits, and match tfjs ops on cpu`, async () => {
      setBatchNormHelperThread(false);
      const before = batchNormHelperCalls();
      const serial = results(shape, fused);
      expect(batchNormHelperCalls()).toBe(before);
      setBatchNormHelperThread(true);
      const threaded = results(shape, fused);
      // Forward twice (statistics, then under tf.grads) and backward once.
      expect(batchNormHelperCalls()).toBe(before + 3);
      threaded.forEach((a, i) => expect(new Uint32Array(a.buffer), `output ${i}`).toEqual(new Uint32Array(serial[i].buffer)));
      await tf.setBackend('cpu');
      const expected = results(shape, composed);
      await tf.setBackend('wasm');
      threaded.forEach((a, i) => {
        let diff = 0;
        let ref = 0;
        a.forEach((v, j) => {
          diff = Math.max(diff, Math.abs(v - expected[i][j]));
          ref = Math.max(ref, Math.abs(expected[i][j]));
        });
        expect(diff / Math.max(ref, 1), `output ${i}`).toBeLessThan(1e-4);
      });
    });
  }
});

describe('HeapHelper', () => {
  function squares(x: Float32Array, scratch: Float64Array, at: number, from: number, to: number, slot: number): void {
    let sum = 0;
    for (let i = at + from; i < at + to; i++) sum += x[i] * x[i];
    scratch[slot] = sum;
  }
  function fails(): void {
    throw new Error('deliberate');
  }

  it('runs one share on the helper thread on the shared buffer, follows a new buffer, reports a failing job', () => {
    const helper = new HeapHelper([squares, fails]);
    const scratch = () => helper.scratch(2);
    for (const n of [1000, 5000]) {
      const heap = new SharedArrayBuffer(4 * n);
      const x = new Float32Array(heap);
      x.forEach((_, i) => (x[i] = (i % 7) - 3));
      helper.run(0, heap, 1, [0, n / 2, n, 1], () => squares(x, scratch(), 0, 0, n / 2, 0));
      const expected = x.reduce((s, v) => s + v * v, 0);
      expect(scratch()[0] + scratch()[1]).toBe(expected);
      expect(scratch()[1]).toBeGreaterThan(0);
    }
    expect(() => helper.run(1, new SharedArrayBuffer(16), 1, [], () => undefined)).toThrow(/helper job failed/);
  });
});
