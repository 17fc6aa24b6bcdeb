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
  tmp = await fs.mkdtemp(path.join(os.tmpdir(), 'blindspot-divnoising-'));
});
afterAll(async () => {
  await fs.rm(tmp, { recursive: true, force: true });
});

describe('divnoising', () => {
  it('trains the VAE by the ELBO and denoises by the MMSE of its samples (2D)', async () => {
    const rng = new Rng(11);
    const size = 96;
    const sigma = 15;
    const cells = syntheticCells([1, size, size], rng, { blobs: Math.round((size * size) / 60), filaments: 5 });
    const clean = cells.data.map((v) => v * 100);
    const noisy: Volume = { data: addGaussianNoise(clean, sigma, rng), shape: [size, size], sampleType: 'float32' };
    const out = path.join(tmp, 'dn');
    const t0 = performance.now();
    const manifest = await trainModel({
      volumes: [{ volume: noisy, name: 'cells' }],
      out,
      method: 'divnoising',
      steps: 150,
      batchSize: 8,
      patchShape: [32, 32],
      network: { depth: 2, filters: 16, latentChannels: 8 },
      learningRate: 3e-3,
      validateEvery: 50,
      seed: 3,
      noiseFits: false,
      prior: { kind: 'gaussian', sigma },
    });
    console.log(`train ${((performance.now() - t0) / 1000).toFixed(1)} s`, manifest.history.map((h) => `${h.step}:${h.loss.toFixed(3)}/${h.valLoss?.toFixed(3)}`).join(' '));
    const { model, manifest: loaded } = await loadModelFolder(out);
    const t1 = performance.now();
    const mmse = await denoiseVolume(model, loaded, noisy, { sampling: { samples: 20, seed: 1 } });
    const one = await denoiseVolume(model, loaded, noisy, { output: 'sample', sampling: { samples: 20, seed: 1, sampleIndex: 0 } });
    const std = await denoiseVolume(model, loaded, noisy, { output: 'uncertainty', sampling: { samples: 20, seed: 1 } });
    console.log(`denoise ${((performance.now() - t1) / 1000).toFixed(1)} s`);
    model.dispose();
    const noisyPsnr = psnr(clean, noisy.data, 100);
    const meanStd = std.data.reduce((s, v) => s + v, 0) / std.data.length;
    console.log(`divnoising 2D: noisy ${noisyPsnr.toFixed(2)} sample ${psnr(clean, one.data, 100).toFixed(2)} mmse ${psnr(clean, mmse.data, 100).toFixed(2)} dB; mean std ${meanStd.toFixed(2)}`);
    expect(psnr(clean, mmse.data, 100) - noisyPsnr).toBeGreaterThan(3);
  });
});
