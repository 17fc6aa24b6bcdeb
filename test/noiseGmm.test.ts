/** The Gaussian mixture noise model: fit on simulated Poisson-Gaussian data, sampling, files, tfjs likelihood, bootstrap. */
import { mkdtempSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import * as tf from '@tensorflow/tfjs-core';
import '@tensorflow/tfjs-backend-cpu';
// tfjs-core alone registers no gradients; tfjs-layers registers them all.
import '@tensorflow/tfjs-layers';
import { Rng } from '../core/rng.js';
import type { Volume } from '../core/volume.js';
import { gmmCoefficientTensors, gmmLogDensity, gmmLogLikelihood, gmmMean, gmmVariance, sampleGmm, type GmmNoiseModel } from '../noise/gmm.js';
import { fitGmmNoiseModel } from '../noise/gmmFit.js';
import { gmmNegLogLikelihoodGradients } from '../noise/gmmGradients.js';
import { calibrationPairs, denoisedPairs } from '../noise/pairs.js';
import { bootstrapNoiseModel } from '../noise/bootstrap.js';
import { loadNoiseModel, noiseSpecOf, noiseVarianceFunction, saveNoiseModel } from '../noise/model.js';

const A = 1.5;
const B = 40;
const [S_LO, S_HI] = [10, 800];

/** N frames of a static ramp signal in [S_LO, S_HI] with Poisson-Gaussian noise var = A s + B. */
function poissonGaussianStack(N: number, Y: number, X: number, rng: Rng): { stack: Float32Array; signal: Float32Array } {
  const P = Y * X;
  const signal = new Float32Array(P);
  for (let p = 0; p < P; p++) signal[p] = S_LO + ((S_HI - S_LO) * p) / (P - 1);
  const stack = new Float32Array(N * P);
  for (let f = 0; f < N; f++) for (let p = 0; p < P; p++) stack[f * P + p] = signal[p] + Math.sqrt(A * signal[p] + B) * rng.normal();
  return { stack, signal };
}

let fitted: GmmNoiseModel | undefined;
async function pgModel(): Promise<GmmNoiseModel> {
  if (!fitted) {
    const { stack } = poissonGaussianStack(40, 32, 32, new Rng(8));
    fitted = await fitGmmNoiseModel('stack.tif', calibrationPairs('stack.tif', stack, [40, 32, 32]), { signalFrom: 'frame-mean', components: 3, degree: 2, iterations: 300, seed: 3 });
  }
  return fitted;
}

describe('GMM noise model', () => {
  it('fitted to Poisson-Gaussian calibration frames, reproduces var = a s + b within 10% and the mean', async () => {
    const model = await pgModel();
    expect(model.kind).toBe('gmm');
    expect(model.weightCoefficients).toHaveLength(3);
    expect(model.varianceCoefficients[0]).toHaveLength(3);
    for (let s = S_LO + 10; s <= S_HI - 10; s += 30) {
      expect(Math.abs(gmmVariance(model, s) / (A * s + B) - 1), `variance at ${s}: ${gmmVariance(model, s)}`).toBeLessThan(0.1);
      expect(Math.abs(gmmMean(model, s) - s), `mean at ${s}`).toBeLessThan(1e-6 * s);
    }
    expect(Math.abs(model.a / A - 1), `a ${model.a}`).toBeLessThan(0.1);
    expect(Math.abs(model.b / B - 1), `b ${model.b}`).toBeLessThan(0.15);
    // The likelihood of the data is that of the true model, give or take a little (mean -log p per pair).
    const rng = new Rng(99);
    let trueNll = 0;
    let modelNll = 0;
    for (let i = 0; i < 4000; i++) {
      const s = S_LO + (S_HI - S_LO) * rng.uniform();
      const v = A * s + B;
      const x = s + Math.sqrt(v) * rng.normal();
      trueNll += 0.5 * Math.log(2 * Math.PI * v) + (x - s) ** 2 / (2 * v);
      modelNll -= gmmLogDensity(model, s, x);
    }
    expect(modelNll / 4000 - trueNll / 4000).toBeLessThan(0.01);
  });

  it('a mixture fits heavy-tailed noise better than one Gaussian', async () => {
    // 80% N(0, 4^2), 20% N(0, 16^2) around every signal: a single Gaussian cannot describe it.
    const rng = new Rng(5);
    const n = 60000;
    const s = new Float32Array(n);
    const x = new Float32Array(n);
    for (let i = 0; i < n; i++) {
      s[i] = 100 + 400 * rng.uniform();
      x[i] = s[i] + (rng.uniform() < 0.8 ? 4 : 16) * rng.normal();
    }
    x[0] = NaN; // left out, and counted
    const pairs = denoisedPairs([{ name: 'tails', noisy: x, denoised: s, sampleType: 'float32' }]);
    const options = { signalFrom: 'denoised' as const, degree: 1, iterations: 400, seed: 2 };
    const one = await fitGmmNoiseModel('tails', pairs, { ...options, components: 1 });
    const two = await fitGmmNoiseModel('tails', pairs, { ...options, components: 2 });
    expect(two.fit.negLogLikelihood).toBeLessThan(one.fit.negLogLikelihood - 0.05);
    expect(two.excludedObservations).toEqual({ clipped: 0, nonFinite: 1 });
    // Both keep the total variance: 0.8 * 16 + 0.2 * 256 = 64.
    expect(Math.abs(gmmVariance(two, 300) / 64 - 1)).toBeLessThan(0.1);
  });

  it('samples are seeded-reproducible and have the model variance', async () => {
    const model = await pgModel();
    const signal = new Float32Array(20000).fill(500);
    const first = sampleGmm(model, signal, new Rng(7));
    expect(sampleGmm(model, signal, new Rng(7))).toEqual(first);
    expect(sampleGmm(model, signal, new Rng(8))).not.toEqual(first);
    let mean = 0;
    for (const v of first) mean += v / first.length;
    let variance = 0;
    for (const v of first) variance += (v - mean) ** 2 / (first.length - 1);
    expect(Math.abs(mean - 500)).toBeLessThan(4 * Math.sqrt(gmmVariance(model, 500) / first.length));
    expect(Math.abs(variance / gmmVariance(model, 500) - 1)).toBeLessThan(0.05);
  });

  it('tfjs log-likelihood equals the plain one, and its gradients equal the hand-written ones', async () => {
    const model = await pgModel();
    const rng = new Rng(12);
    const s = Float32Array.from({ length: 64 }, () => S_LO + (S_HI - S_LO) * rng.uniform());
    const x = Float32Array.from(s, (v) => v + 20 * rng.normal());
    const ll = (await gmmLogLikelihood(model, tf.tensor2d(s, [8, 8]), tf.tensor2d(x, [8, 8])).data()) as Float32Array;
    expect(ll.length).toBe(64);
    for (let i = 0; i < 64; i++) expect(ll[i]).toBeCloseTo(gmmLogDensity(model, s[i], x[i]), 3);

    const coefficients = gmmCoefficientTensors(model);
    const variables = [coefficients.weight, coefficients.offset, coefficients.variance];
    const grads = tf.grads((w: tf.Tensor, o: tf.Tensor, v: tf.Tensor) =>
      tf.neg(tf.mean(gmmLogLikelihood(model, tf.tensor1d(s), tf.tensor1d(x), { weight: w as tf.Tensor2D, offset: o as tf.Tensor2D, variance: v as tf.Tensor2D }))),
    )(variables);
    const rows = { weight: model.weightCoefficients.map((r) => r.map(() => 0)), offset: model.offsetCoefficients.map((r) => r.map(() => 0)), variance: model.varianceCoefficients.map((r) => r.map(() => 0)) };
    gmmNegLogLikelihoodGradients(model, { weight: model.weightCoefficients, offset: model.offsetCoefficients, variance: model.varianceCoefficients }, s, x, rows);
    const byHand = [rows.weight, rows.offset, rows.variance];
    for (let g = 0; g < 3; g++) {
      const fromTf = (await grads[g].array()) as number[][]; // [D + 1][K]
      const scale = Math.max(1e-3, ...byHand[g].flat().map(Math.abs));
      byHand[g].forEach((row, k) => row.forEach((value, d) => expect(Math.abs(fromTf[d][k] - value) / scale, `gradient ${g} [${k}][${d}]`).toBeLessThan(2e-3)));
    }
    // Differentiable in the signal too (the DivNoising decoder's output).
    const ds = await tf.grad((sig: tf.Tensor) => tf.sum(gmmLogLikelihood(model, sig, tf.tensor1d(x))))(tf.tensor1d(s)).data();
    const h = 0.01;
    expect(ds[0]).toBeCloseTo((gmmLogDensity(model, s[0] + h, x[0]) - gmmLogDensity(model, s[0] - h, x[0])) / (2 * h), 3);
  });

  it('round-trips through a noise-model file, gives a variance function and a Poisson-Gaussian summary', async () => {
    const model = await pgModel();
    const dir = mkdtempSync(path.join(os.tmpdir(), 'gmm-model-'));
    const file = path.join(dir, 'noise.json');
    await saveNoiseModel(file, model);
    const loaded = await loadNoiseModel(file);
    expect(loaded).toEqual(model);
    const variance = noiseVarianceFunction(loaded);
    for (const s of [100, 400, 700]) expect(variance(s)).toBeCloseTo(gmmVariance(model, s), 6);
    // Beyond the fitted range the summary extrapolates.
    expect(variance(5000)).toBeCloseTo(model.a * 5000 + model.b, 6);
    expect(noiseSpecOf(loaded)).toEqual({ kind: 'poisson-gaussian', a: model.a, b: model.b });

    const broken = path.join(dir, 'broken.json');
    writeFileSync(broken, JSON.stringify({ ...model, varianceCoefficients: [[1, 2]] }));
    await expect(loadNoiseModel(broken)).rejects.toThrow(/GMM noise model that needs 3 x 3 finite/);
    writeFileSync(broken, JSON.stringify({ ...model, signalRange: [5, 5] }));
    await expect(loadNoiseModel(broken)).rejects.toThrow(/invalid signal range/);
  });

  it('bootstrapped from a denoiser\'s output, recovers the noise level within 15% (GMM and histogram)', async () => {
    // A smooth image (slow ramp and blob) with Poisson-Gaussian noise; the denoiser is a 9x9 box
    // filter, which on this image leaves a small bias (its error is part of what the model sees).
    const [Y, X] = [128, 128];
    const rng = new Rng(21);
    const clean = new Float32Array(Y * X);
    for (let y = 0; y < Y; y++)
      for (let x = 0; x < X; x++) clean[y * X + x] = 50 + 600 * (x / X) + 150 * Math.exp(-((y - 64) ** 2 + (x - 40) ** 2) / (2 * 30 ** 2));
    const noisy = Float32Array.from(clean, (s) => s + Math.sqrt(A * s + B) * rng.normal());
    const boxFilter = async (v: Volume): Promise<Volume> => {
      const [h, w] = v.shape;
      const out = new Float32Array(v.data.length);
      const r = 4;
      for (let y = 0; y < h; y++)
        for (let x = 0; x < w; x++) {
          let sum = 0;
          let n = 0;
          for (let dy = -r; dy <= r; dy++)
            for (let dx = -r; dx <= r; dx++) {
              const yy = Math.min(h - 1, Math.max(0, y + dy));
              const xx = Math.min(w - 1, Math.max(0, x + dx));
              sum += v.data[yy * w + xx];
              n++;
            }
          out[y * w + x] = sum / n;
        }
      return { data: out, shape: v.shape, sampleType: 'float32' };
    };
    const model = await bootstrapNoiseModel([{ name: 'noisy.tif', read: async () => ({ data: noisy, shape: [Y, X], sampleType: 'float32' }) }], boxFilter, { iterations: 300, seed: 4 });
    expect(model.signalFrom).toBe('denoised');
    if (model.kind !== 'gmm') throw new Error('expected a GMM');
    for (const s of [150, 350, 550]) expect(Math.abs(gmmVariance(model, s) / (A * s + B) - 1), `variance at ${s}: ${gmmVariance(model, s)}`).toBeLessThan(0.15);
    // The histogram model from the same pairs, too.
    const histogram = await bootstrapNoiseModel([{ name: 'noisy.tif', read: async () => ({ data: noisy, shape: [Y, X], sampleType: 'float32' }) }], boxFilter, { model: 'histogram' });
    expect([histogram.kind, histogram.signalFrom]).toEqual(['calibrated', 'denoised']);
    const variance = noiseVarianceFunction(histogram);
    for (const s of [150, 350, 550]) expect(Math.abs(variance(s) / (A * s + B) - 1), `histogram variance at ${s}: ${variance(s)}`).toBeLessThan(0.15);
  });
});
