import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { promises as fs } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { initBackend } from '../backend/select.js';
import { psnr } from '../core/metrics.js';
import { Rng } from '../core/rng.js';
import { addGaussianNoise, syntheticCells } from '../core/synthetic.js';
import type { Volume } from '../core/volume.js';
import { loadModelFolder } from '../models/io.js';
import type { GmmNoiseModel } from '../noise/gmm.js';
import { denoiseVolume } from '../pipeline/denoise.js';
import { trainModel } from '../pipeline/train.js';

let tmp: string;
beforeAll(async () => {
  await initBackend({ backend: 'wasm' });
  tmp = await fs.mkdtemp(path.join(os.tmpdir(), 'blindspot-pn2v-'));
});
afterAll(async () => {
  await fs.rm(tmp, { recursive: true, force: true });
});

/** A one-component GMM with variance sigma^2 everywhere (the mixture's exact Gaussian special case). */
export function gaussianGmm(sigma: number, signalRange: [number, number]): GmmNoiseModel {
  return {
    format: 'blindspot-noise-model',
    version: 1,
    kind: 'gmm',
    source: 'test',
    signalFrom: 'frame-mean',
    components: 1,
    degree: 1,
    signalRange,
    residualScale: sigma,
    minVariance: 1e-3,
    weightCoefficients: [[0, 0]],
    offsetCoefficients: [[0, 0]],
    varianceCoefficients: [[1, 0]],
    a: 0,
    b: sigma * sigma,
    excludedObservations: { clipped: 0, nonFinite: 0 },
    fit: { pairs: 0, iterations: 0, batchSize: 0, learningRate: 0, seed: 0, negLogLikelihood: 0 },
  };
}

describe('pn2v', () => {
  it('trains with a GMM noise model and denoises by the MMSE of its prior samples (2D)', async () => {
    const rng = new Rng(11);
    const size = 96;
    const sigma = 15;
    const cells = syntheticCells([1, size, size], rng, { blobs: Math.round((size * size) / 60), filaments: 5 });
    const clean = cells.data.map((v) => v * 100);
    const noisy: Volume = { data: addGaussianNoise(clean, sigma, rng), shape: [size, size], sampleType: 'float32' };
    const out = path.join(tmp, 'pn2v');
    const manifest = await trainModel({
      volumes: [{ volume: noisy, name: 'cells' }],
      out,
      method: 'pn2v',
      steps: 120,
      batchSize: 8,
      patchShape: [32, 32],
      network: { depth: 2, filters: 8, priorSamples: 16 },
      learningRate: 3e-3,
      validateEvery: 40,
      seed: 3,
      noiseFits: false,
      prior: { kind: 'gaussian', sigma },
      noiseModel: gaussianGmm(sigma, [-50, 150]),
    });
    expect(manifest.loss).toBe('pn2v');
    expect(manifest.network.outputChannels).toBe(16);
    expect(manifest.noiseModel?.gmm?.kind).toBe('gmm');
    const { model, manifest: loaded } = await loadModelFolder(out);
    const mmse = await denoiseVolume(model, loaded, noisy);
    const std = await denoiseVolume(model, loaded, noisy, { output: 'uncertainty' });
    model.dispose();
    const gain = psnr(clean, mmse.data, 100) - psnr(clean, noisy.data, 100);
    const meanStd = std.data.reduce((s, v) => s + v, 0) / std.data.length;
    console.log(`pn2v 2D: PSNR gain ${gain.toFixed(2)} dB, mean posterior std ${meanStd.toFixed(2)} (noise sigma ${sigma})`);
    expect(gain).toBeGreaterThan(3);
    expect(meanStd).toBeGreaterThan(0.5);
    expect(meanStd).toBeLessThan(sigma);
  });
});
