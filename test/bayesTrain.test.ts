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
import { denoiseVolume } from '../pipeline/denoise.js';
import { trainModel } from '../pipeline/train.js';

let tmp: string;
beforeAll(async () => {
  await initBackend({ backend: 'wasm' });
  tmp = await fs.mkdtemp(path.join(os.tmpdir(), 'blindspot-bayes-'));
});
afterAll(async () => {
  await fs.rm(tmp, { recursive: true, force: true });
});

describe('Gaussian-prior training and posterior-mean denoising', () => {
  it('trains by the prior likelihood, stores the noise model, and denoises with the posterior', async () => {
    const rng = new Rng(11);
    const size = 128;
    const sigma = 15;
    const cells = syntheticCells([1, size, size], rng, { blobs: Math.round((size * size) / 60), filaments: 6 });
    const cleanData = cells.data.map((v) => v * 100);
    const noisy: Volume = { data: addGaussianNoise(cleanData, sigma, rng), shape: [size, size], sampleType: 'float32' };
    const out = path.join(tmp, 'prior');
    const manifest = await trainModel({
      volumes: [{ volume: noisy, name: 'synthetic' }],
      out,
      steps: 150,
      batchSize: 8,
      patchShape: [32, 32],
      network: { depth: 2, filters: 8, kernelSize: 3, batchNorm: true },
      learningRate: 2e-3,
      validateEvery: 25,
      seed: 3,
      prior: { kind: 'gaussian', sigma },
    });
    expect(manifest.loss).toBe('prior-nll');
    expect(manifest.prior).toEqual({ noise: { kind: 'gaussian', sigma }, source: 'given' });
    expect(manifest.network.outputChannels).toBe(2);
    // The training image's noise-level function was fitted in a worker while training ran.
    expect(manifest.noise).toHaveLength(1);
    expect(manifest.noise![0].name).toBe('synthetic');
    expect(Math.abs(manifest.noise![0].sigma - sigma) / sigma).toBeLessThan(0.15);

    const { model, manifest: loaded } = await loadModelFolder(out);
    const posteriorMean = await denoiseVolume(model, loaded, noisy);
    const priorMean = await denoiseVolume(model, loaded, noisy, { output: 'prior-mean' });
    const std = await denoiseVolume(model, loaded, noisy, { output: 'uncertainty' });
    model.dispose();
    const noisyPsnr = psnr(cleanData, noisy.data, 100);
    const posteriorPsnr = psnr(cleanData, posteriorMean.data, 100);
    const priorPsnr = psnr(cleanData, priorMean.data, 100);
    console.log(`noisy ${noisyPsnr.toFixed(2)} prior-mean ${priorPsnr.toFixed(2)} posterior ${posteriorPsnr.toFixed(2)} dB`);
    expect(posteriorPsnr - noisyPsnr).toBeGreaterThan(3);
    // Both estimates denoise. (With N2V masking the U-Net sees the pixel at inference, so the posterior
    // counts it twice and trails the prior mean after short training: measured 23.7 vs 22.0 dB here;
    // the blind-spot architectures of the methods issue remove that.)
    expect(priorPsnr - noisyPsnr).toBeGreaterThan(3);
    // Posterior std in input units: positive, and below the noise sigma (the pixel alone would give sigma).
    let sum = 0;
    for (const v of std.data) {
      expect(v).toBeGreaterThan(0);
      sum += v;
    }
    const meanStd = sum / std.data.length;
    expect(meanStd).toBeLessThan(sigma);
    expect(meanStd).toBeGreaterThan(0.5);
  });
});
