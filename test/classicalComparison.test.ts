import { describe, expect, it } from 'vitest';
import { Rng } from '../core/rng.js';
import { addGaussianNoise, syntheticCells } from '../core/synthetic.js';
import type { Volume } from '../core/volume.js';
import { classicalComparisonLines, compareWithClassical } from '../pipeline/classicalComparison.js';

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
