import { beforeAll, describe, expect, it } from 'vitest';
import * as tf from '@tensorflow/tfjs-core';
import '@tensorflow/tfjs-backend-cpu';
import { Rng } from '../core/rng.js';
import { gaussianPriorLoss, normalisedNoiseVariance, posterior, priorTileModel } from '../models/bayes.js';
import { buildUNet, defaultUNetConfig } from '../models/unet.js';

beforeAll(async () => {
  await tf.setBackend('cpu');
});

/** [mu, log var] pairs as a [n, 1, 1, 2] prediction. */
function prediction(mu: number[], variance: number[]): tf.Tensor {
  const values = mu.flatMap((m, i) => [m, Math.log(variance[i])]);
  return tf.tensor(values, [mu.length, 1, 1, 2]);
}

describe('Gaussian prior maths', () => {
  it('posterior mean and std follow the conjugate-Gaussian formulas', () => {
    const mu = [0.5, -1, 2];
    const priorVar = [0.25, 4, 1e-3];
    const y = [1.5, 0, 2.5];
    const sigmaN = 0.5;
    const noise = normalisedNoiseVariance({ kind: 'gaussian', sigma: sigmaN }, { mode: 'meanstd', offset: 0, scale: 1 });
    const p = posterior(prediction(mu, priorVar), tf.tensor(y, [3, 1, 1, 1]), noise);
    const mean = p.mean.dataSync();
    const std = p.std.dataSync();
    mu.forEach((m, i) => {
      const n2 = sigmaN * sigmaN;
      expect(mean[i]).toBeCloseTo((n2 * m + priorVar[i] * y[i]) / (priorVar[i] + n2), 4);
      expect(std[i]).toBeCloseTo(Math.sqrt((priorVar[i] * n2) / (priorVar[i] + n2)), 4);
    });
    // A confident prior (tiny variance) ignores the pixel; a vague one follows it.
    expect(Math.abs(mean[2] - mu[2])).toBeLessThan(0.01);
    expect(Math.abs(mean[1] - y[1])).toBeLessThan(0.3);
  });

  it('Poisson-Gaussian noise variance is converted to normalised units', () => {
    const norm = { mode: 'meanstd' as const, offset: 100, scale: 20 };
    const a = 2;
    const b = 9;
    const f = normalisedNoiseVariance({ kind: 'poisson-gaussian', a, b }, norm);
    const muNormalised = [-1, 0, 3];
    const got = f(tf.tensor(muNormalised)).dataSync();
    muNormalised.forEach((n, i) => {
      const raw = n * norm.scale + norm.offset;
      expect(got[i]).toBeCloseTo((a * raw + b) / norm.scale ** 2, 5);
    });
  });

  it('the posterior mean beats both the prior mean and the noisy value when the prior is right', () => {
    const rng = new Rng(3);
    const n = 20000;
    const mu = new Float32Array(n);
    const priorVar = new Float32Array(n);
    const y = new Float32Array(n);
    const x = new Float32Array(n);
    const sigmaN = 0.6;
    for (let i = 0; i < n; i++) {
      mu[i] = rng.normal();
      priorVar[i] = 0.05 + rng.uniform() * 0.5;
      x[i] = mu[i] + Math.sqrt(priorVar[i]) * rng.normal();
      y[i] = x[i] + sigmaN * rng.normal();
    }
    const noise = normalisedNoiseVariance({ kind: 'gaussian', sigma: sigmaN }, { mode: 'meanstd', offset: 0, scale: 1 });
    const p = posterior(prediction(Array.from(mu), Array.from(priorVar)), tf.tensor(y, [n, 1, 1, 1]), noise);
    const est = p.mean.dataSync();
    const mse = (a: ArrayLike<number>): number => {
      let s = 0;
      for (let i = 0; i < n; i++) s += (a[i] - x[i]) ** 2;
      return s / n;
    };
    expect(mse(est)).toBeLessThan(0.9 * mse(mu));
    expect(mse(est)).toBeLessThan(0.9 * mse(y));
  });

  it('the loss is smallest when the predicted prior matches the data, and counts only masked pixels', () => {
    const rng = new Rng(5);
    const n = 4000;
    const target = new Float32Array(n);
    const mask = new Float32Array(n);
    for (let i = 0; i < n; i++) {
      target[i] = 1 + Math.sqrt(0.3 + 0.2) * rng.normal(); // prior var 0.3 + noise var 0.2
      mask[i] = i % 2;
    }
    const noise = normalisedNoiseVariance({ kind: 'gaussian', sigma: Math.sqrt(0.2) }, { mode: 'meanstd', offset: 0, scale: 1 });
    const loss = gaussianPriorLoss(noise);
    const lossAt = (m: number, v: number): number =>
      loss(prediction(new Array(n).fill(m), new Array(n).fill(v)), tf.tensor(target, [n, 1, 1, 1]), tf.tensor(mask, [n, 1, 1, 1])).dataSync()[0];
    const best = lossAt(1, 0.3);
    expect(lossAt(1, 0.05)).toBeGreaterThan(best);
    expect(lossAt(1, 2)).toBeGreaterThan(best);
    expect(lossAt(1.5, 0.3)).toBeGreaterThan(best);
    // Unmasked pixels do not count: corrupting them leaves the loss unchanged.
    const corrupted = target.map((t, i) => (mask[i] ? t : 1000));
    const same = loss(prediction(new Array(n).fill(1), new Array(n).fill(0.3)), tf.tensor(corrupted, [n, 1, 1, 1]), tf.tensor(mask, [n, 1, 1, 1])).dataSync()[0];
    expect(same).toBeCloseTo(best, 5);
  });

  it('a 2-channel U-Net becomes a 1-channel tile model for each output', () => {
    const model = buildUNet({ ...defaultUNetConfig(2), filters: 4, depth: 1, outputChannels: 2 }, 1);
    const noise = normalisedNoiseVariance({ kind: 'gaussian', sigma: 1 }, { mode: 'meanstd', offset: 0, scale: 1 });
    const x = tf.randomNormal([1, 16, 16, 1], 0, 1, 'float32', 1);
    for (const output of ['posterior-mean', 'posterior-std', 'prior-mean'] as const) {
      const y = priorTileModel(model, noise, output)(x);
      expect(y.shape).toEqual([1, 16, 16, 1]);
      if (output === 'posterior-std') expect(tf.min(y).dataSync()[0]).toBeGreaterThan(0);
    }
  });
});
