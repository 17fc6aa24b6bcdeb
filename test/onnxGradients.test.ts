import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import { promises as fs } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import * as tf from '@tensorflow/tfjs-core';
import { initBackend } from '../backend/select.js';
import { Rng } from '../core/rng.js';
import { psnr } from '../core/metrics.js';
import { addGaussianNoise, syntheticCells } from '../core/synthetic.js';
import { UsageError } from '../core/errors.js';
import type { Volume } from '../core/volume.js';
import { openOnnxGradientEngine } from '../engines/onnxGradients.js';
import { maskedLoss } from '../models/losses.js';
import { loadModelFolder } from '../models/io.js';
import { UnsupportedLayerError } from '../models/onnx/layers.js';
import { buildUNet } from '../models/unet.js';
import { denoiseVolume } from '../pipeline/denoise.js';
import { trainModel, type TrainOptions } from '../pipeline/train.js';

let tmp: string;
beforeAll(async () => {
  await initBackend({ backend: 'wasm', threads: 1 });
  tmp = await fs.mkdtemp(path.join(os.tmpdir(), 'blindspot-onnx-gradients-'));
});
afterAll(async () => {
  await fs.rm(tmp, { recursive: true, force: true });
});

function randomBatch(shape: number[], seed: number, maskFraction: number): { shape: number[]; inputs: Float32Array; targets: Float32Array; masks: Float32Array } {
  const rng = new Rng(seed);
  const n = shape.reduce((a, b) => a * b, 1);
  const uniform = (): Float32Array => Float32Array.from({ length: n }, () => rng.uniform() * 2 - 1);
  return { shape, inputs: uniform(), targets: uniform(), masks: Float32Array.from({ length: n }, () => (rng.uniform() < maskFraction ? 1 : 0)) };
}

/** ||a - b|| / ||a||. */
function relativeError(a: ArrayLike<number>, b: ArrayLike<number>): number {
  let num = 0;
  let den = 0;
  for (let i = 0; i < a.length; i++) {
    num += (a[i] - b[i]) ** 2;
    den += a[i] ** 2;
  }
  return Math.sqrt(num / Math.max(den, 1e-30));
}

describe('the ONNX training graph', () => {
  for (const loss of ['mse', 'mae'] as const) {
    it(`gives tfjs' masked ${loss} loss and gradients for every weight of a U-Net`, async () => {
      const model = buildUNet({ dims: 2, depth: 2, filters: 8, kernelSize: 3, batchNorm: false, variant: 'n2v', init: 'torch' }, 5);
      const batch = randomBatch([2, 32, 32, 1], 7, 0.05);
      const variables = model.trainableWeights.map((w) => w.read() as tf.Variable);
      const reference = tf.variableGrads(
        () => maskedLoss(model.apply(tf.tensor(batch.inputs, batch.shape), { training: true }) as tf.Tensor, tf.tensor(batch.targets, batch.shape), tf.tensor(batch.masks, batch.shape), loss),
        variables,
      );
      const engine = await openOnnxGradientEngine(model, { loss, threads: 1 });
      const ours = await engine.gradients(batch, variables.map((v) => v.dataSync() as Float32Array));
      await engine.dispose();
      expect(Math.abs(ours.loss - reference.value.dataSync()[0])).toBeLessThan(1e-5 * Math.abs(ours.loss));
      expect(ours.gradients.length).toBe(variables.length);
      variables.forEach((v, i) => {
        const expected = reference.grads[v.name].dataSync();
        expect(ours.gradients[i].length).toBe(expected.length);
        // float32 sums in another order: a few ulps of the norm, nowhere near a wrong layout or sign.
        expect(relativeError(expected, ours.gradients[i]), model.trainableWeights[i].name).toBeLessThan(1e-5);
      });
      tf.dispose([reference.value, ...Object.values(reference.grads)]);
      model.dispose();
    });
  }

  it('refuses a network with batch norm, naming the layer', async () => {
    const model = buildUNet({ dims: 2, depth: 1, filters: 4, kernelSize: 3, batchNorm: true, variant: 'n2v', init: 'torch' }, 1);
    await expect(openOnnxGradientEngine(model, { loss: 'mse' })).rejects.toThrow(UnsupportedLayerError);
    await expect(openOnnxGradientEngine(model, { loss: 'mse' })).rejects.toThrow(/down0_0_bn.*BlindspotChannelBatchNorm/);
    model.dispose();
  });
});

/** Synthetic cells at 0..100 with Gaussian noise sigma 15. */
function noisyPair(size: number, seed: number): { clean: Volume; noisy: Volume } {
  const rng = new Rng(seed);
  const cells = syntheticCells([1, size, size], rng, { blobs: Math.round((size * size) / 60), filaments: 6 });
  const cleanData = cells.data.map((v) => v * 100);
  return { clean: { data: cleanData, shape: [size, size], sampleType: 'float32' }, noisy: { data: addGaussianNoise(cleanData, 15, rng), shape: [size, size], sampleType: 'float32' } };
}

const run = (out: string, volume: Volume, extra: Partial<TrainOptions> = {}): TrainOptions => ({
  volumes: [{ volume, name: 'synthetic' }],
  out,
  steps: 150,
  batchSize: 8,
  patchShape: [32, 32],
  network: { depth: 2, filters: 8, kernelSize: 3, batchNorm: false },
  learningRate: 2e-3,
  validateEvery: 25,
  seed: 3,
  classicalCheck: false,
  backend: { name: 'wasm', threads: 1 },
  ...extra,
});

describe('train --train-engine onnx', () => {
  it('trains N2V as tfjs does: the same losses step for step, a model that denoises, the engine in the manifest', async () => {
    const { clean, noisy } = noisyPair(128, 1);
    const onnxOut = path.join(tmp, 'onnx');
    const tfjsOut = path.join(tmp, 'tfjs');
    const viaOnnx = await trainModel(run(onnxOut, noisy, { trainEngine: 'onnx' }));
    const viaTfjs = await trainModel(run(tfjsOut, noisy, { steps: 10 }));
    expect(viaOnnx.training.trainEngine).toBe('onnx');
    expect(viaTfjs.training.trainEngine).toBeUndefined();
    // Same seed, same batches, gradients equal to float rounding: the first steps' losses agree closely.
    for (let i = 0; i < 10; i++) expect(Math.abs(viaOnnx.history[i].loss - viaTfjs.history[i].loss)).toBeLessThan(1e-3 * viaTfjs.history[i].loss + 1e-6);
    const vals = viaOnnx.history.filter((h) => h.valLoss !== undefined).map((h) => h.valLoss!);
    expect(Math.min(...vals.slice(1))).toBeLessThan(vals[0]);
    const { model, manifest } = await loadModelFolder(onnxOut);
    const denoised = await denoiseVolume(model, manifest, noisy);
    model.dispose();
    // Stated margin, as for the tfjs engine's test: +3 dB after 150 tiny steps.
    expect(psnr(clean.data, denoised.data, 100) - psnr(clean.data, noisy.data, 100)).toBeGreaterThan(3);
  });

  it('refuses what the graph does not compute, saying which engine to use', async () => {
    const { noisy } = noisyPair(64, 2);
    const cases: Array<[Partial<TrainOptions>, RegExp]> = [
      [{ method: 'neighbor2neighbor' }, /neighbor2neighbor's loss is its own.*--train-engine tfjs/],
      [{ network: { depth: 1, filters: 4, kernelSize: 3, batchNorm: true } }, /BatchNorm.*--train-engine tfjs/],
      [{ prior: { kind: 'gaussian', sigma: 15 } }, /Gaussian prior.*--train-engine tfjs/],
    ];
    for (const [extra, message] of cases) {
      const out = path.join(tmp, `refused-${Object.keys(extra)[0]}`);
      const attempt = trainModel(run(out, noisy, { steps: 2, trainEngine: 'onnx', ...extra }));
      await expect(attempt).rejects.toThrow(UsageError);
      await expect(trainModel(run(`${out}-2`, noisy, { steps: 2, trainEngine: 'onnx', ...extra }))).rejects.toThrow(message);
    }
  });
});
