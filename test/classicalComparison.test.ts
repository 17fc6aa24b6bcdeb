import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { promises as fs } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { initBackend } from '../backend/select.js';
import { splitForValidation, trainModel, type TrainEvent, type TrainOptions } from '../pipeline/train.js';
import { loadModelFolder } from '../models/io.js';
import { Rng } from '../core/rng.js';
import { addGaussianNoise, syntheticCells } from '../core/synthetic.js';
import type { Volume } from '../core/volume.js';
import { centredCrop, classicalComparisonLines, compareSavedModelWithClassical, compareWithClassical } from '../pipeline/classicalComparison.js';

describe('network against the calibrated classical filter, by the J-invariant loss', () => {
  it('pure noise on a flat image: a pass-through "network" loses to calibrated nlm, and the warning is printed', async () => {
    const rng = new Rng(3);
    const flat: Volume = { data: Float32Array.from({ length: 40 * 40 }, () => 50 + 10 * rng.normal()), shape: [40, 40], sampleType: 'float32' };
    let calls = 0;
    const passThrough = async (data: Float32Array) => {
      calls++;
      return Float32Array.from(data);
    };
    const c = await compareWithClassical(passThrough, flat, { region: 'flat.tif (validation slab)' });
    expect(calls).toBe(16); // one prediction per phase of the 4x4 grid
    // Pass-through reads the donut mean at the masked pixel: about sigma^2 (1 + 1/8) = 112.5.
    expect(c.networkLoss).toBeGreaterThan(100);
    expect(c.networkLoss).toBeLessThan(130);
    expect(c.classical.loss).toBeLessThan(c.networkLoss);
    expect(c.classicalBetter).toBe(true);
    const lines = classicalComparisonLines(c);
    expect(lines[0]).toContain('flat.tif (validation slab)');
    expect(lines[0]).toContain(`network ${c.networkLoss.toPrecision(5)}`);
    expect(lines[1]).toMatch(/^warning: the calibrated nlm filter denoises these pixels better than the network: train longer, or use `blindspot calibrate --denoiser nlm`/);
    // The gap, in percent of the filter's loss, and in loss units.
    expect(lines[2]).toContain(`the network's loss is ${((100 * (c.networkLoss - c.classical.loss)) / c.classical.loss).toFixed(1)}% above the filter's`);
    expect(lines[2]).toContain(`(${(c.networkLoss - c.classical.loss).toPrecision(3)})`);
  });

  it('a structured image: the clean image as the "network" beats the filter, and no warning is printed', async () => {
    const rng = new Rng(4);
    const cells = syntheticCells([1, 48, 48], rng, { blobs: 40, filaments: 4 });
    const clean = cells.data.map((v) => v * 200);
    const noisy: Volume = { data: addGaussianNoise(clean, 20, rng), shape: [48, 48], sampleType: 'float32' };
    const c = await compareWithClassical(async () => clean, noisy, { region: 'cells' });
    // The oracle's loss is the noise variance alone (about 400); the filter adds its own error.
    expect(c.networkLoss).toBeGreaterThan(300);
    expect(c.networkLoss).toBeLessThan(500);
    expect(c.classical.loss).toBeGreaterThan(c.networkLoss);
    expect(c.classicalBetter).toBe(false);
    expect(classicalComparisonLines(c)).toHaveLength(1);
  });
});

describe('train ends with the comparison on one image or stack', () => {
  let tmp: string;
  beforeAll(async () => {
    await initBackend({ backend: 'cpu' });
    tmp = await fs.mkdtemp(path.join(os.tmpdir(), 'blindspot-classical-'));
  });
  afterAll(async () => {
    await fs.rm(tmp, { recursive: true, force: true });
  });

  const flatNoise = (seed: number): Volume => {
    const rng = new Rng(seed);
    return { data: Float32Array.from({ length: 64 * 64 }, () => 100 + 10 * rng.normal()), shape: [64, 64], sampleType: 'float32' };
  };
  const tiny: Partial<TrainOptions> = { steps: 4, batchSize: 2, patchShape: [32, 32], network: { depth: 1, filters: 4 }, validateEvery: 2, noiseFits: false, seed: 3 };

  it('an untrained network on a structured image: the filter must win, the event says so and the printed lines warn', async () => {
    // A network that has not learned (learning rate ~0) scores about the image's own variance plus
    // the noise's; calibrated nlm gets close to the noise variance alone. (On pure noise over a flat
    // image a network that learned the mean is optimal, so that case cannot force a loss.)
    const rng = new Rng(4);
    const cells = syntheticCells([1, 64, 64], rng, { blobs: 40, filaments: 4 });
    const noisy: Volume = { data: addGaussianNoise(cells.data.map((v) => v * 200), 10, rng), shape: [64, 64], sampleType: 'float32' };
    const events: TrainEvent[] = [];
    await trainModel({ ...tiny, learningRate: 1e-9, volumes: [{ volume: noisy, name: 'cells.tif' }], out: path.join(tmp, 'untrained'), onEvent: (e) => events.push(e) });
    const comparisons = events.filter((e) => e.type === 'classical-comparison');
    expect(comparisons).toHaveLength(1);
    const c = comparisons[0] as Extract<TrainEvent, { type: 'classical-comparison' }>;
    expect(c.region).toBe('cells.tif (validation slab)');
    expect(c.classicalBetter).toBe(true);
    expect(c.classical.loss).toBeLessThan(c.networkLoss);
    expect(classicalComparisonLines(c).join('\n')).toMatch(/warning: the calibrated nlm filter denoises these pixels better than the network/);
    // It comes just before 'done'.
    expect(events[events.length - 2].type).toBe('classical-comparison');
  }, 120_000);

  it('scores the network on ONNX Runtime (the engine denoise picks), with the numbers tfjs gives', async () => {
    const rng = new Rng(5);
    const cells = syntheticCells([1, 64, 64], rng, { blobs: 40, filaments: 4 });
    const noisy: Volume = { data: addGaussianNoise(cells.data.map((v) => v * 200), 10, rng), shape: [64, 64], sampleType: 'float32' };
    const out = path.join(tmp, 'engines');
    const events: TrainEvent[] = [];
    await trainModel({ ...tiny, volumes: [{ volume: noisy, name: 'cells.tif' }], out, onEvent: (e) => events.push(e) });
    const onnx = events.find((e) => e.type === 'classical-comparison') as Extract<TrainEvent, { type: 'classical-comparison' }>;
    expect(onnx.engine).toBe('onnx');
    // The same held-out slab, scored again with the network on tfjs.
    const heldOut = splitForValidation([{ volume: noisy, name: 'cells.tif' }], tiny.patchShape as number[], 0.1).validation[0];
    const tfjs = await compareSavedModelWithClassical(out, (await loadModelFolder(out)).manifest, heldOut, { engine: 'tfjs' });
    expect(tfjs.engine).toBe('tfjs');
    expect(tfjs.region).toBe(onnx.region);
    expect(tfjs.classical).toEqual(onnx.classical);
    expect(Math.abs(tfjs.networkLoss - onnx.networkLoss) / tfjs.networkLoss).toBeLessThan(1e-4);
  }, 120_000);

  it('not with --no-classical-check, and not for several images', async () => {
    const events: TrainEvent[] = [];
    await trainModel({ ...tiny, volumes: [{ volume: flatNoise(2), name: 'a.tif' }], out: path.join(tmp, 'off'), classicalCheck: false, onEvent: (e) => events.push(e) });
    await trainModel({ ...tiny, volumes: [{ volume: flatNoise(3), name: 'a.tif' }, { volume: flatNoise(4), name: 'b.tif' }], out: path.join(tmp, 'two'), onEvent: (e) => events.push(e) });
    expect(events.some((e) => e.type === 'classical-comparison')).toBe(false);
  }, 120_000);

  it('centredCrop keeps the centre and bounds the voxels', () => {
    const volume: Volume = { data: Float32Array.from({ length: 10 * 20 }, (_, i) => i), shape: [10, 20], sampleType: 'float32' };
    const crop = centredCrop(volume, 50);
    expect(crop.data.length).toBeLessThanOrEqual(50);
    const [h, w] = crop.shape as [number, number];
    const y0 = Math.floor((10 - h) / 2);
    const x0 = Math.floor((20 - w) / 2);
    expect(crop.data[0]).toBe(y0 * 20 + x0);
    expect(crop.data[crop.data.length - 1]).toBe((y0 + h - 1) * 20 + x0 + w - 1);
    expect(centredCrop(volume, 1000)).toBe(volume);
  });
});
