import { describe, expect, it } from 'vitest';
import { psnr, ssim } from '../core/metrics.js';
import { Rng } from '../core/rng.js';
import type { Shape2D } from '../core/volume.js';

function randomImage(height: number, width: number, seed: number, scale = 255): Float32Array {
  const rng = new Rng(seed);
  // Smooth structure plus texture, so SSIM is not trivially near 0 or 1.
  return Float32Array.from({ length: height * width }, (_, i) => {
    const y = Math.floor(i / width);
    const x = i % width;
    return Math.fround(scale * (0.5 + 0.3 * Math.sin(x / 3) * Math.cos(y / 4) + 0.1 * rng.uniform()));
  });
}

function addNoise(image: Float32Array, sigma: number, seed: number): Float32Array {
  const rng = new Rng(seed);
  return image.map((v) => v + sigma * rng.normal());
}

/**
 * SSIM written straight from the paper's definition: for every 11x11 window fully inside the
 * image, Gaussian-weighted means, variances and covariance by direct double sums (no separable
 * filtering, no ring buffer), then the mean of the local SSIM values.
 */
function referenceSsim(a: Float32Array, b: Float32Array, [height, width]: Shape2D, range: number): number {
  const taps = Array.from({ length: 11 }, (_, k) => Math.exp(-((k - 5) ** 2) / (2 * 1.5 * 1.5)));
  const total = taps.reduce((s, t) => s + t, 0) ** 2;
  const c1 = (0.01 * range) ** 2;
  const c2 = (0.03 * range) ** 2;
  let sum = 0;
  let windows = 0;
  for (let y0 = 0; y0 + 11 <= height; y0++) {
    for (let x0 = 0; x0 + 11 <= width; x0++) {
      let muA = 0;
      let muB = 0;
      for (let dy = 0; dy < 11; dy++) {
        for (let dx = 0; dx < 11; dx++) {
          const w = (taps[dy] * taps[dx]) / total;
          muA += w * a[(y0 + dy) * width + x0 + dx];
          muB += w * b[(y0 + dy) * width + x0 + dx];
        }
      }
      let varA = 0;
      let varB = 0;
      let cov = 0;
      for (let dy = 0; dy < 11; dy++) {
        for (let dx = 0; dx < 11; dx++) {
          const w = (taps[dy] * taps[dx]) / total;
          const da = a[(y0 + dy) * width + x0 + dx] - muA;
          const db = b[(y0 + dy) * width + x0 + dx] - muB;
          varA += w * da * da;
          varB += w * db * db;
          cov += w * da * db;
        }
      }
      sum += ((2 * muA * muB + c1) * (2 * cov + c2)) / ((muA * muA + muB * muB + c1) * (varA + varB + c2));
      windows++;
    }
  }
  return sum / windows;
}

describe('psnr', () => {
  it('matches 10 log10(range^2 / MSE) for a hand-computed case', () => {
    // Errors 0, 2, -2, 4 -> MSE = (0 + 4 + 4 + 16) / 4 = 6.
    const clean = Float32Array.of(10, 20, 30, 40);
    const test = Float32Array.of(10, 22, 28, 44);
    expect(psnr(clean, test, 255)).toBeCloseTo(10 * Math.log10((255 * 255) / 6), 10);
    expect(psnr(clean, test, 1)).toBeCloseTo(10 * Math.log10(1 / 6), 10);
  });

  it('is +Infinity for identical images and close to 20 log10(range/sigma) for Gaussian noise', () => {
    const clean = randomImage(64, 64, 1);
    expect(psnr(clean, clean, 255)).toBe(Infinity);
    const noisy = addNoise(clean, 25, 2);
    expect(psnr(clean, noisy, 255)).toBeCloseTo(20 * Math.log10(255 / 25), 0);
    expect(psnr(clean, noisy, 255)).toBe(psnr(noisy, clean, 255));
  });

  it('rejects mismatched lengths and a non-positive range', () => {
    expect(() => psnr(new Float32Array(4), new Float32Array(5), 1)).toThrow(/differ in length/);
    expect(() => psnr(new Float32Array(4), new Float32Array(4), 0)).toThrow(/range/);
  });
});

describe('ssim (11x11 Gaussian window, sigma 1.5, K1 0.01, K2 0.03)', () => {
  it('is exactly 1 for identical images', () => {
    const image = randomImage(32, 40, 3);
    expect(ssim(image, image, [32, 40], 255)).toBeCloseTo(1, 12);
  });

  it('equals the closed form for two constant images (variances zero)', () => {
    // mu_a = 100, mu_b = 110, all variances 0: SSIM = (2*100*110 + C1) / (100^2 + 110^2 + C1).
    const a = new Float32Array(15 * 12).fill(100);
    const b = new Float32Array(15 * 12).fill(110);
    const c1 = (0.01 * 255) ** 2;
    const expected = (2 * 100 * 110 + c1) / (100 * 100 + 110 * 110 + c1);
    expect(ssim(a, b, [15, 12], 255)).toBeCloseTo(expected, 12);
  });

  it('equals a direct per-window evaluation of the definition', () => {
    const shape: Shape2D = [19, 23];
    const clean = randomImage(...shape, 4);
    const noisy = addNoise(clean, 30, 5);
    const expected = referenceSsim(clean, noisy, shape, 255);
    expect(expected).toBeGreaterThan(0.05);
    expect(expected).toBeLessThan(0.95);
    expect(ssim(clean, noisy, shape, 255)).toBeCloseTo(expected, 10);
  });

  it('is symmetric and decreases as noise grows', () => {
    const shape: Shape2D = [48, 48];
    const clean = randomImage(...shape, 6);
    const values = [2, 8, 20, 50].map((sigma) => ssim(clean, addNoise(clean, sigma, 7), shape, 255));
    for (let i = 1; i < values.length; i++) expect(values[i]).toBeLessThan(values[i - 1]);
    expect(values[0]).toBeLessThan(1);
    const noisy = addNoise(clean, 20, 8);
    expect(ssim(noisy, clean, shape, 255)).toBeCloseTo(ssim(clean, noisy, shape, 255), 12);
  });

  it('uses the range: the same images score higher with a larger stated range', () => {
    const shape: Shape2D = [24, 24];
    const clean = randomImage(...shape, 9, 1);
    const noisy = addNoise(clean, 0.1, 10);
    expect(ssim(clean, noisy, shape, 2)).toBeGreaterThan(ssim(clean, noisy, shape, 1));
  });

  it('3D is the mean of the per-slice values', () => {
    const [z, y, x] = [3, 14, 16];
    const clean = randomImage(z * y, x, 11);
    const noisy = addNoise(clean, 15, 12);
    const slice = y * x;
    const perSlice = [0, 1, 2].map((k) =>
      ssim(clean.subarray(k * slice, (k + 1) * slice), noisy.subarray(k * slice, (k + 1) * slice), [y, x], 255),
    );
    expect(new Set(perSlice.map((v) => v.toFixed(6))).size).toBe(3);
    expect(ssim(clean, noisy, [z, y, x], 255)).toBeCloseTo((perSlice[0] + perSlice[1] + perSlice[2]) / 3, 12);
  });

  it('rejects slices smaller than the window and shapes that do not fit the data', () => {
    expect(() => ssim(new Float32Array(100), new Float32Array(100), [10, 10], 1)).toThrow(/at least 11x11/);
    expect(() => ssim(new Float32Array(144), new Float32Array(144), [12, 13], 1)).toThrow(/does not match/);
  });
});
