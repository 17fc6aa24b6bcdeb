/**
 * The benchmarks' test-set scoring (bench/testSets.denoiseTestSets) denoises on the engine it is
 * asked for: auto takes ONNX Runtime where the model folder has a graph, as `blindspot denoise`
 * does, and both engines give the same scores, so a table's PSNR does not depend on which ran.
 */
import path from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { initBackend } from '../backend/select.js';
import { Rng } from '../core/rng.js';
import { addGaussianNoise, syntheticCells } from '../core/synthetic.js';
import { denoiseTestSets, score, type TestImage } from '../bench/testSets.js';

const fixtures = path.join(import.meta.dirname, 'fixtures', 'models');

/** A 48x48 grey-level image (0-255) of cells with Gaussian noise (sigma 20) of its own seed. */
function testImage(seed: number): TestImage {
  const rng = new Rng(seed);
  const cells = syntheticCells([1, 48, 48], rng, { blobs: 40, filaments: 2 });
  const clean = { data: cells.data.map((v) => v * 200), shape: [48, 48] as [number, number], sampleType: 'float32' as const };
  return { name: `cells-${seed}`, clean, noisy: { ...clean, data: addGaussianNoise(clean.data, 20, rng) }, range: 255 };
}

beforeAll(async () => {
  await initBackend({ backend: 'cpu' });
});

describe('denoiseTestSets', () => {
  const sets = { first: [testImage(1), testImage(2)], second: [testImage(3)] };

  for (const folder of ['n2v-2d', 'laine19-2d-prior-learned']) {
    it(`${folder}: auto runs ONNX Runtime, tfjs runs tfjs, and their scores agree`, async () => {
      const dir = path.join(fixtures, folder);
      const auto = await denoiseTestSets(dir, sets, { engine: 'auto', threads: 1 });
      const tfjs = await denoiseTestSets(dir, sets, { engine: 'tfjs' });
      expect(auto.engine).toBe('onnx');
      expect(tfjs.engine).toBe('tfjs');
      expect(auto.engineDetail).toMatch(/onnx/i);
      for (const key of ['first', 'second'] as const) {
        expect(auto.pixels[key]).toBe(sets[key].length * 48 * 48);
        expect(auto.seconds[key]).toBeGreaterThanOrEqual(0);
        expect(auto.scores[key].images).toBe(sets[key].length);
        expect(Math.abs(auto.scores[key].psnr - tfjs.scores[key].psnr)).toBeLessThan(0.01);
        // It denoised: each output scores differently from its noisy input.
        expect(auto.scores[key].psnr).not.toBeCloseTo(score(sets[key], sets[key].map((i) => i.noisy)).psnr, 1);
      }
    });
  }
});
