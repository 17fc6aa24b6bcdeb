import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import { promises as fs } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { initBackend } from '../backend/select.js';
import { Rng } from '../core/rng.js';
import { psnr } from '../core/metrics.js';
import { addGaussianNoise, syntheticCells } from '../core/synthetic.js';
import { UsageError } from '../core/errors.js';
import type { Volume } from '../core/volume.js';
import { loadModelFolder } from '../models/io.js';
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
  for (const batchNorm of [false, true]) {
  it(`trains N2V as tfjs does${batchNorm ? ' (with batch norm)' : ''}: the same losses step for step, a model that denoises, the engine in the manifest`, async () => {
    const { clean, noisy } = noisyPair(128, 1);
    const onnxOut = path.join(tmp, `onnx-${batchNorm}`);
    const tfjsOut = path.join(tmp, `tfjs-${batchNorm}`);
    const network = { depth: 2, filters: 8, kernelSize: 3, batchNorm };
    const viaOnnx = await trainModel(run(onnxOut, noisy, { trainEngine: 'onnx', network }));
    const viaTfjs = await trainModel(run(tfjsOut, noisy, { steps: 10, network }));
    expect(viaOnnx.training.trainEngine).toBe('onnx');
    expect(viaTfjs.training.trainEngine).toBeUndefined();
    // Same seed, same batches: the first step's loss is the same forward pass. Without batch norm the
    // gradients agree to float rounding, so the next steps' losses do too; with it, tfjs wasm's own
    // gradients differ from tfjs cpu's and ONNX Runtime's (test/onnxTrainingGraph.test.ts) and the runs part.
    expect(Math.abs(viaOnnx.history[0].loss - viaTfjs.history[0].loss)).toBeLessThan(1e-5 * viaTfjs.history[0].loss);
    const sameSteps = batchNorm ? 1 : 10;
    for (let i = 1; i < sameSteps; i++) expect(Math.abs(viaOnnx.history[i].loss - viaTfjs.history[i].loss)).toBeLessThan(1e-3 * viaTfjs.history[i].loss + 1e-6);
    const vals = viaOnnx.history.filter((h) => h.valLoss !== undefined).map((h) => h.valLoss!);
    expect(Math.min(...vals.slice(1))).toBeLessThan(vals[0]);
    const { model, manifest } = await loadModelFolder(onnxOut);
    const denoised = await denoiseVolume(model, manifest, noisy);
    model.dispose();
    // Stated margin, as for the tfjs engine's test: +3 dB after 150 tiny steps.
    expect(psnr(clean.data, denoised.data, 100) - psnr(clean.data, noisy.data, 100)).toBeGreaterThan(3);
  });
  }

  it('refuses what the graph does not compute, saying which engine to use', async () => {
    const { noisy } = noisyPair(64, 2);
    const cases: Array<[Partial<TrainOptions>, RegExp]> = [
      [{ method: 'neighbor2neighbor' }, /neighbor2neighbor's loss is its own.*--train-engine tfjs/],
      [{ method: 'n2v2' }, /MaxBlurPool.*--train-engine tfjs/],
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
