import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import { promises as fs } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { initBackend } from '../backend/select.js';
import { noisyPair } from './fixtures/noisyCells.js';
import { Rng } from '../core/rng.js';
import { psnr } from '../core/metrics.js';
import { syntheticCells, addGaussianNoise } from '../core/synthetic.js';
import type { Volume } from '../core/volume.js';
import { InputError, OutputError } from '../core/errors.js';
import { loadModelFolder, readManifest } from '../models/io.js';
import { trainModel, TrainingInterrupted, type TrainOptions } from '../pipeline/train.js';
import { denoiseVolume } from '../pipeline/denoise.js';

let tmp: string;
beforeAll(async () => {
  await initBackend({ backend: 'wasm' });
  tmp = await fs.mkdtemp(path.join(os.tmpdir(), 'blindspot-train-'));
});
afterAll(async () => {
  await fs.rm(tmp, { recursive: true, force: true });
});

const tiny = (out: string, volume: Volume, extra: Partial<TrainOptions> = {}): TrainOptions => ({
  volumes: [{ volume, name: 'synthetic' }],
  out,
  steps: 40,
  batchSize: 8,
  patchShape: [32, 32],
  network: { depth: 2, filters: 8, kernelSize: 3, batchNorm: true },
  learningRate: 2e-3,
  validateEvery: 10,
  seed: 3,
  ...extra,
});

describe('Noise2Void training', () => {
  it('lowers the masked validation loss and raises PSNR on a tiny synthetic problem', async () => {
    const { clean, noisy } = noisyPair(128, 1);
    const out = path.join(tmp, 'learn');
    const manifest = await trainModel(tiny(out, noisy, { steps: 150, validateEvery: 25 }));
    const vals = manifest.history.filter((h) => h.valLoss !== undefined).map((h) => h.valLoss!);
    expect(vals.length).toBe(6);
    expect(Math.min(...vals.slice(1))).toBeLessThan(vals[0]);
    const { model, manifest: loaded } = await loadModelFolder(out);
    const denoised = await denoiseVolume(model, loaded, noisy);
    model.dispose();
    const before = psnr(clean.data, noisy.data, 100);
    const after = psnr(clean.data, denoised.data, 100);
    // Stated margin: at least +3 dB after 150 tiny steps (noisy is ~16.5 dB).
    expect(after - before).toBeGreaterThan(3);
    expect(loaded.training.finished).toBe(true);
    expect(loaded.method).toBe('n2v');
    expect(loaded.normalisation.scale).toBeGreaterThan(0);
    await expect(fs.access(path.join(out, 'checkpoint'))).rejects.toThrow();
  });

  it('is reproducible with a seed, and a resumed run continues the same trajectory', async () => {
    const { noisy } = noisyPair(96, 2);
    const a = await trainModel(tiny(path.join(tmp, 'seed-a'), noisy));
    const b = await trainModel(tiny(path.join(tmp, 'seed-b'), noisy));
    expect(b.history.map((h) => h.loss)).toEqual(a.history.map((h) => h.loss));

    // Interrupt after step 15 (not a validation step), then resume to the end.
    const out = path.join(tmp, 'resume');
    const controller = new AbortController();
    await expect(
      trainModel(
        tiny(out, noisy, {
          signal: controller.signal,
          onEvent: (e) => {
            if (e.type === 'step' && e.step === 15) controller.abort();
          },
        }),
      ),
    ).rejects.toBeInstanceOf(TrainingInterrupted);
    await fs.access(path.join(out, 'checkpoint', 'state.json'));
    await expect(trainModel(tiny(out, noisy))).rejects.toBeInstanceOf(OutputError);
    const resumed = await trainModel(tiny(out, noisy, { resume: true }));
    expect(resumed.history.length).toBe(a.history.length);
    resumed.history.forEach((h, i) => {
      expect(h.step).toBe(a.history[i].step);
      expect(h.loss).toBeCloseTo(a.history[i].loss, 4);
    });
    expect((await readManifest(out)).training.finished).toBe(true);
  }, 300_000);

  it('ends at a wall-clock budget as a finished, validated run, or at --steps when that comes first', async () => {
    const { noisy } = noisyPair(64, 5);
    const events: string[] = [];
    const out = path.join(tmp, 'budget');
    const { steps: _unused, ...noSteps } = tiny(out, noisy, { classicalCheck: false });
    const manifest = await trainModel({ ...noSteps, validateEvery: undefined, timeBudgetSeconds: 1.5, onEvent: (e) => events.push(e.type) });
    expect(events).toContain('time-budget-spent');
    expect(manifest.training.finished).toBe(true);
    expect(manifest.training.timeBudgetSeconds).toBe(1.5);
    expect(manifest.training.wallSeconds).toBeGreaterThanOrEqual(1.5);
    expect(manifest.training.stepsDone).toBeGreaterThan(0);
    // The last step was validated, and the folder holds a loadable best model.
    expect(manifest.history[manifest.history.length - 1].valLoss).toBeDefined();
    expect((await readManifest(out)).training.stepsDone).toBe(manifest.training.stepsDone);
    (await loadModelFolder(out)).model.dispose();
    const capped: string[] = [];
    const short = await trainModel(tiny(path.join(tmp, 'budget-capped'), noisy, { steps: 3, validateEvery: 1, classicalCheck: false, timeBudgetSeconds: 3600, onEvent: (e) => capped.push(e.type) }));
    expect(short.training.stepsDone).toBe(3);
    expect(capped).not.toContain('time-budget-spent');
    await expect(trainModel(tiny(path.join(tmp, 'budget-bad'), noisy, { timeBudgetSeconds: 0 }))).rejects.toThrow(/time budget must be positive/);
  }, 120_000);

  it('refuses to overwrite a finished model and rejects images smaller than a patch', async () => {
    const { noisy } = noisyPair(64, 4);
    const out = path.join(tmp, 'finished');
    await trainModel(tiny(out, noisy, { steps: 2, validateEvery: 1 }));
    await expect(trainModel(tiny(out, noisy, { steps: 2 }))).rejects.toBeInstanceOf(OutputError);
    const small: Volume = { data: new Float32Array(24 * 40), shape: [24, 40], sampleType: 'float32' };
    const err = await trainModel(tiny(path.join(tmp, 'small'), small)).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(InputError);
    expect((err as Error).message).toMatch(/smaller than the training patch 32x32/);
    await expect(fs.access(path.join(tmp, 'small'))).rejects.toThrow();
  });

  it('trains a 3D U-Net on wasm (registered 3D kernels) and lowers the loss', async () => {
    const rng = new Rng(5);
    const cells = syntheticCells([16, 48, 48], rng);
    const noisy: Volume = { data: addGaussianNoise(cells.data.map((v) => v * 100), 15, rng), shape: [16, 48, 48], sampleType: 'float32' };
    const manifest = await trainModel({
      volumes: [{ volume: noisy, name: '3d' }],
      out: path.join(tmp, 'three-d'),
      steps: 60,
      batchSize: 4,
      patchShape: [8, 16, 16],
      network: { depth: 2, filters: 8, kernelSize: 3, batchNorm: true },
      learningRate: 3e-3,
      validateEvery: 20,
      seed: 9,
      // The wasm kernels' gradients, not ONNX Runtime's (auto's choice in 3D).
      trainEngine: 'tfjs',
    });
    expect(manifest.network.dims).toBe(3);
    const vals = manifest.history.filter((h) => h.valLoss !== undefined).map((h) => h.valLoss!);
    expect(Math.min(...vals.slice(1))).toBeLessThan(vals[0]);
  }, 240_000);
});
